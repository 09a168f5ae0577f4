"""PickScore: our critic against transformers' CLIPModel.get_image_features / get_text_features directly."""

from __future__ import annotations

import json

import pytest
import torch
from critic_files import write_official
from transformers import AutoTokenizer, CLIPModel

from vdistill.critics import load_critic
from vdistill.critics.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vdistill.errors import UserError

PROMPTS = ["a red car drives slowly", "the dog runs on the beach"]


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_matches_transformers_clip_model(tmp_path, clip_processor_dir):
    path, _ = write_official("pickscore", tmp_path)
    critic = load_critic("pickscore", checkpoint=path, processor=clip_processor_dir, size="tiny")
    ref = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(clip_processor_dir, local_files_only=True)

    frames = torch.rand(2, 3, 28, 28)
    pixels = (frames - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    with torch.no_grad():
        img = _features(ref.get_image_features(pixel_values=pixels))
        inputs = tok(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        txt = _features(ref.get_text_features(**inputs))
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(critic.embed_frames(frames), img)
        torch.testing.assert_close(critic.embed_text(PROMPTS), txt)
        # official PickScore: logit_scale.exp() * cosine; raw_cosine=True is T2V-Turbo's reward
        official = ref.logit_scale.exp() * (img * txt).sum(-1)
        torch.testing.assert_close(critic(frames[:, None], PROMPTS), official)
        critic.raw_cosine = True
        torch.testing.assert_close(critic(frames[:, None], PROMPTS), (img * txt).sum(-1))


def test_processor_image_stats_are_read(tmp_path, clip_processor_dir):
    folder = tmp_path / "processor"
    AutoTokenizer.from_pretrained(clip_processor_dir, local_files_only=True).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.2] * 3}))
    critic = load_critic("pickscore", processor=folder, size="tiny")
    assert critic.mean == (0.5,) * 3 and critic.std == (0.2,) * 3


def test_processor_is_required_and_checked(tmp_path):
    with pytest.raises(UserError, match="processor="):
        load_critic("pickscore", size="tiny")
    with pytest.raises(UserError, match=f"PickScore processor folder not found: '{tmp_path / 'laion'}'"):
        load_critic("pickscore", processor=tmp_path / "laion", size="tiny")
