"""FLOPs traced on the meta device against the closed form of a transformer forward."""

import json

import torch

from vdistill.profile.counter import count_flops, flash_attention
from vdistill.profile.models import CONFIGS, build_part


def test_wan_1_3b_forward_matches_the_closed_form():
    cfg = json.loads((CONFIGS / "Wan2.1-T2V-1.3B-Diffusers" / "transformer" / "config.json").read_text())
    model = build_part("diffusers", "WanTransformer3DModel", cfg, torch.bfloat16)
    frames, h, w, text_len = 21, 60, 104, 512  # 81 x 480 x 832 through the VAE (4x, 8x)
    p_t, p_h, p_w = cfg["patch_size"]
    tokens = frames // p_t * (h // p_h) * (w // p_w)
    assert tokens == 32_760
    x = torch.zeros(1, cfg["in_channels"], frames, h, w, device="meta", dtype=torch.bfloat16)
    text = torch.zeros(1, text_len, cfg["text_dim"], device="meta", dtype=torch.bfloat16)
    with torch.no_grad(), flash_attention():
        counted = count_flops(model, x, torch.full((1,), 500.0, device="meta"), text, return_dict=False)
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    blocks = cfg["num_layers"]
    # linear layers: 2 x (parameters of each Linear) x (tokens it runs on)
    per_block_video = 4 * d * d + 2 * d * d + 2 * d * cfg["ffn_dim"]  # self q k v o, cross q o, FFN
    per_block_text = 2 * d * d  # cross-attention k v on the text tokens
    linear = 2 * blocks * (per_block_video * tokens + per_block_text * text_len)
    linear += 2 * tokens * d * cfg["in_channels"] * p_t * p_h * p_w  # patch embedding
    linear += 2 * tokens * d * cfg["out_channels"] * p_t * p_h * p_w  # output projection
    linear += 2 * text_len * (cfg["text_dim"] * d + d * d)  # text embedder
    attention = blocks * (4 * tokens * tokens * d + 4 * tokens * text_len * d)  # QK^T and AV, self + cross
    closed = linear + attention
    assert abs(counted - closed) / closed < 0.02, (counted, closed)
