"""InternVideo2 Stage2: official key names, the official (naive-attention) forward, pos-emb resampling, the
keys dropped by name, and the BERT text path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vdistill.critics.internvideo2 import INTERNVIDEO2_SIZES, InternVideo2Stage2, ignored_key
from vdistill.errors import UserError


def test_vision_keys_are_the_official_ones():
    """Key list written from the official PretrainInternVideo2 (1B, sep_image_video_pos_embed=True)."""
    cfg = INTERNVIDEO2_SIZES["tiny"]
    block = ["norm1.weight", "attn.qkv.weight", "attn.q_norm.weight", "attn.k_norm.weight", "attn.proj.weight",
             "attn.proj.bias", "ls1.gamma", "norm2.weight", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
             "mlp.fc2.bias", "ls2.gamma"]
    pool = [f"{n}.{p}" for n in ("norm1_q", "norm1_k", "norm1_v") for p in ("weight", "bias")]
    pool += ["cross_attn.q.weight", "cross_attn.k.weight", "cross_attn.v.weight", "cross_attn.q_bias",
             "cross_attn.k_bias", "cross_attn.v_bias", "cross_attn.proj.weight", "cross_attn.proj.bias"]
    vision = ["patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "img_pos_embed"]
    vision += [f"blocks.{i}.{k}" for i in range(cfg.depth) for k in block] + [f"clip_projector.{k}" for k in pool]
    sd = InternVideo2Stage2(cfg).state_dict()
    got = {k for k in sd if not k.startswith("text_encoder.")}
    assert got == {f"vision_encoder.{k}" for k in vision} | {
        "vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias", "temp"}
    assert "text_encoder.bert.encoder.layer.1.attention.self.query.weight" in sd
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in sd
    assert sd["vision_encoder.pos_embed"].shape == (1, 1 + 4 * 4, cfg.width)  # 4 frames x (28/14)^2 patches


def official_interpolate(pos, t0, t):
    """pos_embed.py interpolate_pos_embed_internvideo2, temporal branch."""
    extra, tokens = pos[:, :1], pos[:, 1:]
    c = pos.shape[-1]
    tokens = tokens.view(1, t0, -1, c).permute(0, 2, 3, 1).reshape(-1, c, t0)
    tokens = F.interpolate(tokens, size=t, mode="linear")
    tokens = tokens.view(1, -1, c, t).permute(0, 3, 1, 2).reshape(1, -1, c)
    return torch.cat([extra, tokens], dim=1)


def official_vision_forward(m, video, heads, pool_heads, pos):
    """PretrainInternVideo2.forward with the non-flash path (_naive_attn) and AttentionPoolingBlock."""
    x = m.patch_embed.proj(video)
    x = x.flatten(3).permute(0, 2, 3, 1)
    b, t, n, c = x.shape
    x = torch.cat([m.cls_token.expand(b, -1, -1), x.reshape(b, t * n, c)], dim=1) + pos
    for blk in m.blocks:
        h = blk.norm1(x)
        qkv = blk.attn.qkv(h).reshape(b, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        n = q.shape[2]
        q = blk.attn.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(b, n, heads, -1).transpose(1, 2)
        k = blk.attn.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(b, n, heads, -1).transpose(1, 2)
        attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        x = x + blk.ls1(blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    p = m.clip_projector
    xq, xk, xv = p.norm1_q(x.mean(1, keepdim=True)), p.norm1_k(x), p.norm1_v(x)
    ca = p.cross_attn
    q = F.linear(xq, ca.q.weight, ca.q_bias).reshape(b, 1, pool_heads, -1).transpose(1, 2)
    k = F.linear(xk, ca.k.weight, ca.k_bias).reshape(b, -1, pool_heads, c // pool_heads).transpose(1, 2)
    v = F.linear(xv, ca.v.weight, ca.v_bias).reshape(b, -1, pool_heads, c // pool_heads).transpose(1, 2)
    attn = ((q * (c // pool_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    return ca.proj((attn @ v).transpose(1, 2).reshape(b, 1, -1)).squeeze(1)


@pytest.mark.parametrize("frames", [4, 8, 1])
def test_vision_matches_official_naive_forward(make_critic, frames):
    critic = make_critic("internvideo2", num_frames=frames)
    cfg, m = INTERNVIDEO2_SIZES["tiny"], critic.model.vision_encoder
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():  # make LayerScale, norms and biases non-trivial
            if "gamma" in name or "norm" in name or "bias" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
        video = torch.randn(2, 3, frames, 28, 28)
        if frames == 1:
            pos = m.img_pos_embed
        else:
            pos = official_interpolate(m.pos_embed, cfg.num_frames, frames)
        ref = official_vision_forward(m, video, cfg.heads, cfg.pool_heads, pos)
        torch.testing.assert_close(m(video), ref, atol=1e-5, rtol=1e-4)


def test_ignored_keys_are_dropped_by_name_only():
    assert ignored_key("vision_encoder.clip_decoder.3.head.weight", 19)
    assert ignored_key("vision_encoder.final_clip_decoder.norm.bias", 19)
    assert ignored_key("vision_encoder.clip_pos_embed", 19)
    assert ignored_key("itm_head.weight", 19) and ignored_key("text_encoder.cls.predictions.bias", 19)
    assert ignored_key("text_encoder.bert.encoder.layer.19.crossattention.self.key.weight", 19)
    assert ignored_key("text_encoder.bert.encoder.layer.23.output.dense.weight", 19)
    assert not ignored_key("text_encoder.bert.encoder.layer.18.output.dense.weight", 19)
    assert not ignored_key("vision_encoder.pos_embed", 19) and not ignored_key("text_proj.weight", 19)
    assert not ignored_key("vision_encoder.blocks.0.attn.qkv.weight", 19)


def test_an_unknown_extra_key_still_fails(make_critic):
    def add(sd):
        return {**sd, "vision_encoder.mystery_head.weight": torch.zeros(1)}

    with pytest.raises(UserError, match=r"missing keys \(0\) \[\]; unexpected keys \(1\) \[vision_encoder.myst"):
        make_critic("internvideo2", mutate=add)


def test_text_path_is_bert_cls_then_text_proj(make_critic):
    critic = make_critic("internvideo2")
    prompts = ["a cat runs on the beach", "the red car"]
    tokens = critic.tokenizer(prompts, padding="max_length", truncation=True, max_length=40, return_tensors="pt")
    assert tokens["input_ids"].shape == (2, 40)
    with torch.no_grad():
        bert = critic.model.text_encoder.bert
        assert len(bert.encoder.layer) == INTERNVIDEO2_SIZES["tiny"].text["num_hidden_layers"]
        cls = bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state[:, 0]
        ref = F.normalize(critic.model.text_proj(cls), dim=-1)
    torch.testing.assert_close(critic.embed_text(prompts), ref)


def test_tokenizer_is_required(tmp_path):
    from vdistill.critics import load_critic

    with pytest.raises(UserError, match="tokenizer="):
        load_critic("internvideo2", size="tiny")
    with pytest.raises(UserError, match=f"tokenizer folder not found: '{tmp_path / 'bert'}'"):
        load_critic("internvideo2", size="tiny", tokenizer=tmp_path / "bert")
