"""HPSv2 / HPSv2.1 (Wu et al. 2023, github.com/tgxs002/HPSv2): an open_clip ViT-H-14 fine-tuned on human
preferences. The official scorer (``hpsv2/img_score.py``) builds open_clip ``ViT-H-14``, strictly loads
``torch.load(HPS_v2.1_compressed.pt)['state_dict']`` (plain open_clip CLIP keys: ``visual.*``, ``transformer.*``,
``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``) and scores
the cosine of the normalised embeddings (no logit scale; typical values 0.25-0.30).

Preprocessing is HPSv2's validation transform: longest side -> 224 (bicubic), zero-pad to a centred square,
OpenAI CLIP mean/std. Text uses open_clip's own ``SimpleTokenizer`` (its BPE vocab ships inside open_clip).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import open_clip
from torch import Tensor

from vdistill.critics.base import Critic
from vdistill.critics.checkpoint import load_strict, read_checkpoint, strip_prefix
from vdistill.critics.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, resize_longest_and_pad
from vdistill.critics.registry import register_critic
from vdistill.errors import unknown_choice


@dataclass(frozen=True)
class OpenClipConfig:
    """An open_clip model: a built-in name (``ViT-H-14``) or an explicit ``CLIP(**cfg)`` config (tiny tests)."""

    model_name: str | None = "ViT-H-14"
    embed_dim: int = 1024
    vision_cfg: dict = field(default_factory=dict)
    text_cfg: dict = field(default_factory=dict)

    def build(self) -> open_clip.CLIP:
        if self.model_name is not None:
            return open_clip.create_model(self.model_name, pretrained=None, load_weights=False,
                                          pretrained_image=False, pretrained_text=False)
        return open_clip.CLIP(embed_dim=self.embed_dim, vision_cfg=self.vision_cfg, text_cfg=self.text_cfg)


HPSV2_SIZES = {
    "full": OpenClipConfig("ViT-H-14"),
    # Same structure as ViT-H-14 (GELU, pre-LN, 77-token text with the full 49408 vocab), tiny widths.
    "tiny": OpenClipConfig(
        model_name=None, embed_dim=16,
        vision_cfg=dict(image_size=28, layers=2, width=32, head_width=16, patch_size=14),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)),
}


class OpenClipCritic(Critic):
    """An image critic around an open_clip ``CLIP`` (``self.model``, ``self.tokenizer``); subclasses set the
    preprocessing."""

    def _encode(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(self.preprocess(pixels))

    def _encode_text(self, prompts: list[str]) -> Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


class HPSv2Critic(OpenClipCritic):
    """HPSv2(.1) image critic: per-frame cosine between open_clip image and text embeddings.

    Args:
        model: an open_clip ``CLIP`` holding the HPSv2 weights.
        num_frames: random frames scored per video (score = mean of per-frame scores).
    """

    name = "hpsv2"
    kind = "image"

    def __init__(self, model: open_clip.CLIP, num_frames: int = 1) -> None:
        super().__init__(num_frames)
        self.model = model
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)

    def preprocess(self, frames: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> normalised ``[N, 3, 224, 224]`` (longest side, zero pad)."""
        return normalize(resize_longest_and_pad(frames, self.image_size), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def build_hpsv2_model(checkpoint: str | Path | None, size: str | OpenClipConfig = "full",
                      trust_checkpoint: bool = False) -> open_clip.CLIP:
    """The open_clip model with HPSv2 weights (``checkpoint=None``: random weights)."""
    if isinstance(size, str):
        if size not in HPSV2_SIZES:
            raise unknown_choice("hpsv2 size", size, HPSV2_SIZES)
        size = HPSV2_SIZES[size]
    model = size.build()
    if checkpoint is not None:
        state = read_checkpoint(checkpoint, "state_dict", "HPSv2", trust_checkpoint)
        load_strict(model, strip_prefix(state, "module."), f"HPSv2 {str(checkpoint)!r}")
    return model


@register_critic("hpsv2")
def load_hpsv2(checkpoint: str | Path | None = None, size: str | OpenClipConfig = "full", num_frames: int = 1,
               trust_checkpoint: bool = False) -> HPSv2Critic:
    """``load_critic("hpsv2", checkpoint="HPS_v2.1_compressed.pt", num_frames=1)``."""
    return HPSv2Critic(build_hpsv2_model(checkpoint, size, trust_checkpoint), num_frames=num_frames)

