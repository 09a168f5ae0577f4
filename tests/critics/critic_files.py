"""Tiny critics saved in their OFFICIAL file layouts (helpers shared by the critic tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from vdistill.critics.hpsv2 import build_hpsv2_model
from vdistill.critics.internvideo2 import INTERNVIDEO2_SIZES, InternVideo2Stage2
from vdistill.critics.pickscore import PICKSCORE_TINY
from vdistill.critics.viclip import VICLIP_SIZES, ViCLIP

BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "cat", "dog", "runs", "on", "beach",
              "red", "car", "drives", "slowly", ",", "."]


def internvideo2_extras(sd: dict) -> dict:
    """Tensors the official DeepSpeed file carries that scoring does not use (names from the official code)."""
    w = sd["vision_encoder.cls_token"].shape[-1]
    t = sd["text_encoder.bert.embeddings.word_embeddings.weight"].shape[-1]
    extra = {
        "vision_encoder.clip_pos_embed": torch.randn_like(sd["vision_encoder.pos_embed"]),
        "vision_encoder.clip_img_pos_embed": torch.randn_like(sd["vision_encoder.img_pos_embed"]),
        "vision_encoder.clip_decoder.0.head.weight": torch.randn(8, w),
        "vision_encoder.clip_decoder.0.norm.bias": torch.randn(8),
        "vision_encoder.final_clip_decoder.head.weight": torch.randn(8, 24),
        "itm_head.weight": torch.randn(2, t), "itm_head.bias": torch.randn(2),
        "text_encoder.cls.predictions.bias": torch.randn(len(BERT_WORDS)),
        "text_encoder.cls.predictions.transform.dense.weight": torch.randn(t, t),
        "text_encoder.bert.embeddings.position_ids": torch.arange(64)[None],
        # fusion layer (index 2 of 3 in the tiny model), with its cross-attention
        "text_encoder.bert.encoder.layer.2.attention.self.query.weight": torch.randn(t, t),
        "text_encoder.bert.encoder.layer.2.crossattention.self.key.weight": torch.randn(t, w),
        "text_encoder.bert.encoder.layer.2.output.LayerNorm.bias": torch.randn(t),
    }
    return {**sd, **extra}


def write_official(name: str, folder: Path, mutate=None):
    """Build a tiny random critic model, write it as the official file layout, return (path, state dict).

    ``mutate(state_dict) -> state_dict`` edits the tensors before saving (to test mismatches).
    """
    mutate = mutate or (lambda sd: sd)
    torch.manual_seed(0)
    if name == "pickscore":
        model = CLIPModel(CLIPConfig(**PICKSCORE_TINY))
        sd = mutate(dict(model.state_dict()))
        path = folder / "PickScore_v1"
        model.save_pretrained(path, state_dict=sd)
        return path, sd
    if name == "hpsv2":
        sd = mutate(dict(build_hpsv2_model(None, "tiny").state_dict()))
        path, obj = folder / "HPS_v2.1_compressed.pt", {"state_dict": sd}
    elif name == "viclip":
        sd = mutate(dict(ViCLIP(VICLIP_SIZES["tiny"]).state_dict()))
        path, obj = folder / "ViClip-InternVid-10M-FLT.pth", {"model": sd}
    elif name == "internvideo2":
        sd = mutate(internvideo2_extras(dict(InternVideo2Stage2(INTERNVIDEO2_SIZES["tiny"]).state_dict())))
        # DeepSpeed bookkeeping next to the weights (plain values, loadable with weights_only=True)
        path, obj = folder / "InternVideo2-stage2_1b-224p-f4.pt", {"module": sd, "ds_version": "0.12.6",
                                                                      "global_steps": 1000}
    else:
        raise ValueError(name)
    torch.save(obj, path)
    return path, sd


def critic_options(name: str, clip_processor_dir: Path, bert_tokenizer_dir: Path) -> dict:
    return {"pickscore": {"processor": clip_processor_dir},
            "internvideo2": {"tokenizer": bert_tokenizer_dir}}.get(name, {})
