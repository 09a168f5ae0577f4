"""ViCLIP: official key names, the official token layout, and the CLIP text tower with a 32-token context."""

from __future__ import annotations

import torch

from vdistill.critics.preprocess import IMAGENET_MEAN, OPENAI_CLIP_MEAN
from vdistill.critics.viclip import VICLIP_SIZES, ViCLIP

BLOCK = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_1.weight",
         "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight",
         "ln_2.bias"]


def test_state_dict_keys_are_the_official_ones():
    """Key list written from the official viclip_vision.py / viclip_text.py / viclip.py modules."""
    cfg = VICLIP_SIZES["tiny"]
    vision = ["conv1.weight", "class_embedding", "positional_embedding", "temporal_positional_embedding",
              "ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias", "proj"]
    vision += [f"transformer.resblocks.{i}.{k}" for i in range(cfg.vision_layers) for k in BLOCK]
    text = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection"]
    text += [f"transformer.resblocks.{i}.{k}" for i in range(cfg.text_layers) for k in BLOCK]
    expected = {f"vision_encoder.{k}" for k in vision} | {f"text_encoder.{k}" for k in text} | {"temp"}
    sd = ViCLIP(cfg).state_dict()
    assert set(sd) == expected
    assert sd["vision_encoder.conv1.weight"].shape == (cfg.vision_width, 3, 1, 14, 14)
    assert sd["vision_encoder.temporal_positional_embedding"].shape == (1, cfg.num_frames, cfg.vision_width)
    assert sd["text_encoder.positional_embedding"].shape == (32, cfg.text_width)


def official_vision_forward(m, x):
    """The official VisionTransformer.forward steps, literally: per-frame tokens, then '(b t) n m -> (b n) t m'."""
    x = m.conv1(x)
    b, c, t, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
    x = torch.cat([m.class_embedding + torch.zeros(x.shape[0], 1, c), x], dim=1) + m.positional_embedding
    cls_tokens, x = x[:b, :1, :], x[:, 1:]
    x = x.reshape(b, t, h * w, c).transpose(1, 2).reshape(b * h * w, t, c)
    x = x + (m.temporal_positional_embedding.mean(1) if t == 1 else m.temporal_positional_embedding)
    x = x.reshape(b, h * w * t, c)
    x = m.ln_pre(torch.cat([cls_tokens, x], dim=1))
    return m.ln_post(m.transformer(x))[:, 0] @ m.proj


def test_vision_matches_official_token_layout(make_critic):
    critic = make_critic("viclip")
    torch.manual_seed(0)
    with torch.no_grad():
        critic.model.vision_encoder.temporal_positional_embedding.normal_()  # zeros at init: make it matter
        for t in (critic.frames, 1):
            x = torch.randn(2, 3, t, 28, 28)
            torch.testing.assert_close(critic.model.vision_encoder(x),
                                       official_vision_forward(critic.model.vision_encoder, x))


def test_other_frame_counts_resample_the_temporal_embedding(make_critic):
    critic = make_critic("viclip", num_frames=8)  # the tiny checkpoint has 4 temporal embeddings
    assert critic.frames == 8
    assert critic.embed_video(torch.rand(2, 16, 3, 28, 28)).shape == (2, 16)


def test_text_uses_32_tokens_with_official_truncation(make_critic):
    critic = make_critic("viclip")
    tokens = critic.tokenizer(["word " * 50, "a cat"])
    assert tokens.shape == (2, 32)
    assert tokens[0, -1] == 49407 and tokens.argmax(-1)[0] == 31  # last token forced to <|endoftext|>
    assert critic.embed_text(["word " * 50]).shape == (1, 16)


def test_normalization_is_a_parameter(make_critic):
    assert make_critic("viclip").mean == IMAGENET_MEAN
    assert make_critic("viclip", normalization="openai").mean == OPENAI_CLIP_MEAN
    assert make_critic("viclip", normalization=((0.5,) * 3, (0.5,) * 3)).std == (0.5,) * 3
