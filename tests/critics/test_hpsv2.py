"""HPSv2: our load path against open_clip's own model on the same weights."""

from __future__ import annotations

import open_clip
import torch
from critic_files import write_official

from vdistill.critics import load_critic
from vdistill.critics.hpsv2 import HPSV2_SIZES
from vdistill.critics.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

PROMPTS = ["a red car drives slowly", "the dog runs on the beach"]


def test_matches_open_clip_on_the_same_weights(tmp_path):
    path, sd = write_official("hpsv2", tmp_path)
    critic = load_critic("hpsv2", checkpoint=path, size="tiny")
    ref = HPSV2_SIZES["tiny"].build().eval()
    ref.load_state_dict(torch.load(path, weights_only=True)["state_dict"])

    frames = torch.rand(3, 3, 28, 28)  # already 28x28: preprocessing is only the normalisation
    pixels = (frames - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(critic.embed_frames(frames), ref.encode_image(pixels, normalize=True))
        tokens = open_clip.get_tokenizer("ViT-H-14")(PROMPTS)  # offline: BPE vocab ships with open_clip
        text = ref.encode_text(tokens, normalize=True)
        torch.testing.assert_close(critic.embed_text(PROMPTS), text)
        # official score: the cosine, no logit scale (hpsv2/img_score.py)
        score = (ref.encode_image(pixels[:2], normalize=True) * text).sum(-1)
        torch.testing.assert_close(critic(frames[:2, None], PROMPTS), score)


def test_module_prefix_is_stripped(tmp_path):
    path, sd = write_official("hpsv2", tmp_path)
    wrapped = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    critic = load_critic("hpsv2", checkpoint=wrapped, size="tiny")
    torch.testing.assert_close(critic.model.logit_scale, sd["logit_scale"])


def test_official_state_dict_keys_are_plain_open_clip():
    keys = set(HPSV2_SIZES["tiny"].build().state_dict())
    for k in ["visual.conv1.weight", "visual.class_embedding", "visual.ln_post.weight", "visual.proj",
              "transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight", "positional_embedding",
              "ln_final.weight", "text_projection", "logit_scale"]:
        assert k in keys


def test_non_square_frames_are_padded_not_cropped(tmp_path):
    path, _ = write_official("hpsv2", tmp_path)
    critic = load_critic("hpsv2", checkpoint=path, size="tiny")
    wide = torch.ones(1, 3, 14, 28)
    pixels = critic.preprocess(wide)
    black = (0 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(pixels[0, :, 0, 0], black)  # top rows are zero padding
    white = (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(pixels[0, :, 14, 14], white)
