"""ViCLIP (Wang et al. 2023, InternVid; official code: OpenGVLab/InternVideo ``Data/InternVid/viclip/``).

``ViClip-InternVid-10M-FLT.pth`` is ``{"model": state_dict}`` with top-level keys ``vision_encoder.*``,
``text_encoder.*`` and ``temp``, loaded strictly by ``viclip.py`` (``self.load_state_dict(state_dict)``).

* Vision (``viclip_vision.py``, ``clip_joint_l14``): ViT-L/14 over 8 frames with joint space-time attention.
  ``conv1`` is a bias-free ``Conv3d`` with kernel ``(1, 14, 14)``; ``class_embedding [W]``;
  ``positional_embedding [1 + 256, W]`` added to every frame's tokens (class token included);
  ``temporal_positional_embedding [1, 8, W]`` added to patch tokens only; tokens laid out ``(patch, frame)``
  after the class token; ``ln_pre``; 24 blocks with ``nn.MultiheadAttention`` keys (``attn.in_proj_weight``,
  ``attn.out_proj``, ``ln_1``, ``mlp.c_fc``, QuickGELU, ``mlp.c_proj``, ``ln_2``); the class token goes through
  ``ln_post`` and ``@ proj [W, 768]``. One frame uses the mean of the temporal embedding, as the official code.
* Text (``viclip_text.py``, ``CLIP_TEXT``): key-for-key open_clip's ``TextTransformer`` (width 768, 12 layers,
  12 heads, QuickGELU, causal mask, eot-token pooling, ``text_projection [768, 768]``) with context length 32;
  tokenised by CLIP's BPE (``SimpleTokenizer``) with the official truncation (last token forced to eot).

Score: cosine of the normalised embeddings (T2V-Turbo ``get_vi_clip_score_fn``; typical 0.2-0.36). Frames:
shortest side -> 224 (bicubic), centre crop (T2V-Turbo cropped at random), ImageNet mean/std as T2V-Turbo
(VBench normalises with OpenAI CLIP's: ``normalization="openai"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import QuickGELU, TextTransformer, Transformer
from torch import Tensor, nn

from vdistill.critics.base import Critic
from vdistill.critics.checkpoint import load_strict, read_checkpoint
from vdistill.critics.layers import resample_temporal
from vdistill.critics.preprocess import normalize, resize_shortest_and_center_crop, resolve_normalization
from vdistill.critics.registry import register_critic, resolve_size


@dataclass(frozen=True)
class ViCLIPConfig:
    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 8
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    embed_dim: int = 768
    context_length: int = 32
    vocab_size: int = 49408
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12


VICLIP_SIZES = {
    "full": ViCLIPConfig(),
    "tiny": ViCLIPConfig(image_size=28, num_frames=4, vision_width=32, vision_layers=2, vision_heads=2,
                         embed_dim=16, text_width=32, text_layers=2, text_heads=2),
}


class ViCLIPVision(nn.Module):
    """ViCLIP's video ViT; parameter names are the official ``vision_encoder.*`` ones."""

    def __init__(self, cfg: ViCLIPConfig) -> None:
        super().__init__()
        w, grid = cfg.vision_width, cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv3d(3, w, (1, cfg.patch_size, cfg.patch_size), (1, cfg.patch_size, cfg.patch_size),
                               bias=False)
        scale = w ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, w))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, act_layer=QuickGELU,
                                       norm_layer=nn.LayerNorm)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))

    def forward(self, video: Tensor) -> Tensor:
        """Normalised ``[B, 3, T, H, W]`` -> ``[B, embed_dim]`` (class token)."""
        x = self.conv1(video)  # [B, W, T, h, w]
        b, w, t = x.shape[:3]
        x = x.flatten(3).permute(0, 3, 2, 1)  # [B, n, T, W]
        x = x + self.positional_embedding[1:, None].to(x.dtype)
        temporal = self.temporal_positional_embedding[0]
        temporal = temporal.mean(0, keepdim=True) if t == 1 else resample_temporal(temporal, t)
        x = (x + temporal.to(x.dtype)).reshape(b, -1, w)  # tokens ordered (patch, frame), as the official code
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, w)
        x = self.transformer(self.ln_pre(torch.cat([cls, x], dim=1)))
        return self.ln_post(x[:, 0]) @ self.proj


class ViCLIP(nn.Module):
    """The official module tree: ``vision_encoder``, ``text_encoder``, ``temp``."""

    def __init__(self, cfg: ViCLIPConfig) -> None:
        super().__init__()
        self.vision_encoder = ViCLIPVision(cfg)
        self.text_encoder = TextTransformer(
            context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.text_width,
            heads=cfg.text_heads, layers=cfg.text_layers, output_dim=cfg.embed_dim, act_layer=QuickGELU,
            norm_layer=nn.LayerNorm)
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))  # contrastive temperature; unused for scoring


class ViCLIPCritic(Critic):
    """ViCLIP video critic: cosine between the clip embedding and the prompt embedding.

    Args:
        model: the :class:`ViCLIP` with weights.
        num_frames: frames per clip (the checkpoint's 8; other counts resample the temporal embedding).
        normalization: ``"imagenet"`` (T2V-Turbo), ``"openai"`` (VBench) or ``(mean, std)``.
    """

    name = "viclip"
    kind = "video"

    def __init__(self, model: ViCLIP, cfg: ViCLIPConfig, num_frames: int | None = None,
                 normalization: str | tuple = "imagenet") -> None:
        super().__init__(num_frames or cfg.num_frames)
        self.model = model
        self.image_size = cfg.image_size
        self.mean, self.std = resolve_normalization(normalization)
        self.tokenizer = SimpleTokenizer(context_length=cfg.context_length)

    def preprocess(self, frames: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> normalised ``[N, 3, 224, 224]`` (shortest side, centre crop)."""
        return normalize(resize_shortest_and_center_crop(frames, self.image_size), self.mean, self.std)

    def _encode(self, pixels: Tensor) -> Tensor:
        b, n = pixels.shape[:2]
        x = self.preprocess(pixels.flatten(0, 1)).unflatten(0, (b, n))
        return self.model.vision_encoder(x.transpose(1, 2))  # [B, 3, T, H, W]

    def _encode_text(self, prompts: list[str]) -> Tensor:
        return self.model.text_encoder(self.tokenizer(prompts).to(self.device))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.vision_encoder.transformer.grad_checkpointing = enable


@register_critic("viclip")
def load_viclip(checkpoint: str | Path | None = None, size: str | ViCLIPConfig = "full",
                num_frames: int | None = None, normalization: str | tuple = "imagenet",
                trust_checkpoint: bool = False) -> ViCLIPCritic:
    """``load_critic("viclip", checkpoint="ViClip-InternVid-10M-FLT.pth")``."""
    cfg = resolve_size("viclip", size, VICLIP_SIZES)
    model = ViCLIP(cfg)
    if checkpoint is not None:
        state = read_checkpoint(checkpoint, "model", "ViCLIP", trust_checkpoint)
        load_strict(model, state, f"ViCLIP {str(checkpoint)!r}")
    return ViCLIPCritic(model, cfg, num_frames=num_frames, normalization=normalization)
