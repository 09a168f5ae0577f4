"""PickScore (Kirstain et al. 2023, github.com/yuvalkirstain/PickScore): a CLIP-ViT-H-14 (laion config) fine-tuned
on Pick-a-Pic preferences, shipped as a transformers ``CLIPModel`` folder (``PickScore_v1``: ``config.json`` +
weights); the processor is laion's ``CLIP-ViT-H-14-laion2B-s32B-b79K`` (tokenizer + image processor).

Official score (the repo's README): ``logit_scale.exp() * cosine`` of the normalised projections (then a softmax
over candidate images, which a per-video reward does not need); that is the default here. T2V-Turbo used the raw
cosine (``reward_fn.py``, ``return_logits=False``): pass ``raw_cosine=True`` to match its reward weights.

Preprocessing follows the CLIP image processor: shortest side -> 224 (bicubic), centre crop 224, mean/std from the
processor folder's ``preprocessor_config.json`` (OpenAI CLIP values when absent). T2V-Turbo squashed frames to
224x224 instead; with square frames the two agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from vdistill.critics.base import Critic
from vdistill.critics.checkpoint import format_keys, require_path
from vdistill.critics.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, resize_shortest_and_center_crop
from vdistill.critics.registry import register_critic
from vdistill.errors import UserError, unknown_choice

# laion/CLIP-ViT-H-14-laion2B-s32B-b79K's config.json, which PickScore_v1 keeps.
PICKSCORE_FULL = dict(
    projection_dim=1024,
    text_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                     hidden_act="gelu", max_position_embeddings=77, vocab_size=49408),
    vision_config=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                       hidden_act="gelu", image_size=224, patch_size=14),
)
PICKSCORE_TINY = dict(
    projection_dim=16,
    text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                     hidden_act="gelu", max_position_embeddings=77, vocab_size=514,
                     bos_token_id=512, eos_token_id=513, pad_token_id=513),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                       hidden_act="gelu", image_size=28, patch_size=14),
)
PICKSCORE_SIZES = {"full": PICKSCORE_FULL, "tiny": PICKSCORE_TINY}


class PickScoreCritic(Critic):
    """PickScore image critic on a transformers ``CLIPModel``.

    Args:
        model: the CLIPModel with PickScore weights.
        tokenizer: the laion CLIP tokenizer.
        num_frames: random frames scored per video (score = mean of per-frame scores).
        raw_cosine: score the cosine (T2V-Turbo) instead of the official ``logit_scale.exp() * cosine``.
        mean, std: image normalisation (the processor's).
    """

    name = "pickscore"
    kind = "image"

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase, num_frames: int = 1,
                 raw_cosine: bool = False, mean: tuple = OPENAI_CLIP_MEAN, std: tuple = OPENAI_CLIP_STD,
                 max_length: int = 77) -> None:
        super().__init__(num_frames)
        self.model = model
        self.tokenizer = tokenizer
        self.raw_cosine = raw_cosine
        self.mean, self.std = tuple(mean), tuple(std)
        self.max_length = max_length
        self.image_size = int(model.config.vision_config.image_size)

    def preprocess(self, frames: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> normalised ``[N, 3, 224, 224]`` (shortest side, centre crop)."""
        return normalize(resize_shortest_and_center_crop(frames, self.image_size), self.mean, self.std)

    def _encode(self, pixels: Tensor) -> Tensor:
        return _pooled(self.model.get_image_features(pixel_values=self.preprocess(pixels)))

    def _encode_text(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        return _pooled(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens["attention_mask"]))

    def score_scale(self) -> Tensor | float:
        return 1.0 if self.raw_cosine else self.model.logit_scale.exp().float()


def _pooled(out: Tensor | object) -> Tensor:
    # transformers >= 5 returns a ModelOutput whose pooler_output is the projected feature; 4.x a tensor.
    return out if isinstance(out, Tensor) else out.pooler_output


def _image_stats(processor_dir: Path) -> tuple[tuple, tuple]:
    cfg_path = processor_dir / "preprocessor_config.json"
    if not cfg_path.exists():
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    cfg = json.loads(cfg_path.read_text())
    return tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)), tuple(cfg.get("image_std", OPENAI_CLIP_STD))


def build_pickscore_model(checkpoint: str | Path | None, size: str | CLIPConfig = "full") -> CLIPModel:
    """``CLIPModel.from_pretrained(checkpoint)`` offline and strictly; ``checkpoint=None``: random weights."""
    if checkpoint is None:
        if isinstance(size, str):
            if size not in PICKSCORE_SIZES:
                raise unknown_choice("pickscore size", size, PICKSCORE_SIZES)
            size = CLIPConfig(**PICKSCORE_SIZES[size])
        return CLIPModel(size)
    folder = require_path(checkpoint, "PickScore checkpoint folder")
    model, info = CLIPModel.from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                            dtype=torch.float32)
    # Old transformers saved position_ids buffers; they are recomputed, not learned.
    unexpected = {k for k in info["unexpected_keys"] if not k.endswith("position_ids")}
    missing, mismatched = set(info["missing_keys"]), info.get("mismatched_keys") or ()
    if missing or unexpected or mismatched:
        raise UserError(f"PickScore checkpoint {str(folder)!r} does not match CLIPModel: missing keys "
                        f"{format_keys(missing)}; unexpected keys {format_keys(unexpected)}; "
                        f"shape mismatches {format_keys(map(str, mismatched))}")
    return model


@register_critic("pickscore")
def load_pickscore(checkpoint: str | Path | None = None, processor: str | Path | None = None,
                   size: str | CLIPConfig = "full", num_frames: int = 1, raw_cosine: bool = False,
                   tokenizer: PreTrainedTokenizerBase | None = None) -> PickScoreCritic:
    """``load_critic("pickscore", checkpoint="PickScore_v1/", processor="CLIP-ViT-H-14-laion2B-s32B-b79K/")``.

    ``processor`` is the folder with the laion CLIP tokenizer (and ``preprocessor_config.json``); a ready
    ``tokenizer`` object may be passed instead.
    """
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    if tokenizer is None:
        if processor is None:
            raise UserError("pickscore needs processor=<folder of the laion CLIP-ViT-H-14 tokenizer>")
        folder = require_path(processor, "PickScore processor folder")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        mean, std = _image_stats(folder)
    model = build_pickscore_model(checkpoint, size)
    return PickScoreCritic(model, tokenizer, num_frames=num_frames, raw_cosine=raw_cosine, mean=mean, std=std)
