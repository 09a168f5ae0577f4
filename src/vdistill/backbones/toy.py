"""The toy teacher: a factorised (2+1)D UNet in pixel space with a small word-level text encoder.

Sized for a CPU (2 cores): per-frame ``Conv2d`` + ``Conv1d`` over time, because a ``Conv3d`` with a temporal
kernel has a ~13x slower backward on CPU for the same work, and no spatial attention (1,024 tokens per frame is
slow). Text reaches every block through FiLM from the pooled caption embedding: the toy world's attributes
(colour, shape, motion) are global, so no cross-attention is needed.

The "VAE" is the affine map pixels [0, 1] -> latents [-1, 1]: latents ``[B, 3, T, H, W]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from vdistill.backbones.base import Backbone, SamplingDefaults, TextCond
from vdistill.diffusion.schedules import FlowSchedule, NoiseSchedule
from vdistill.world.captions import COLOURS, MOTIONS, SHAPES

TOY_VOCAB: tuple[str, ...] = ("<pad>", "<unk>", "a", "moving", *COLOURS, *SHAPES, *MOTIONS)


class ToyTextEncoder(nn.Module):
    """Word-level text encoder: token + position embeddings, one transformer layer, masked mean pooling.

    Returns ``{"pooled": [B, dim]}``; the empty prompt maps to a learned null embedding.
    """

    def __init__(self, dim: int = 64, max_words: int = 8, layers: int = 1) -> None:
        super().__init__()
        self.max_words = max_words
        self.index = {w: i for i, w in enumerate(TOY_VOCAB)}
        self.tokens = nn.Embedding(len(TOY_VOCAB), dim, padding_idx=0)
        self.positions = nn.Embedding(max_words, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        self.null = nn.Parameter(torch.zeros(dim))

    def tokenize(self, prompts: list[str]) -> Tensor:
        ids = torch.zeros(len(prompts), self.max_words, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().replace(",", " ").split()[: self.max_words]
            ids[row, : len(words)] = torch.tensor([self.index.get(w, 1) for w in words], dtype=torch.long)
        return ids

    def forward(self, prompts: list[str]) -> TextCond:
        ids = self.tokenize(prompts).to(self.tokens.weight.device)
        mask = ids != 0
        h = self.tokens(ids) + self.positions.weight[None, : ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=~mask)
        weights = mask.to(h.dtype).unsqueeze(-1)
        pooled = self.out((h * weights).sum(1) / weights.sum(1).clamp(min=1))
        empty = ~mask.any(dim=1, keepdim=True)
        return {"pooled": torch.where(empty, self.null.to(pooled.dtype).expand_as(pooled), pooled)}


class TimeEmbedding(nn.Module):
    """Sinusoidal features -> MLP; its output ``[B, dim]`` is where the guidance-scale embedding is added."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """``t`` ``[B]`` network timesteps (0..1000 scale)."""
        # cos first and frequencies 10000^(-i / half) (shift 0): the features the shipped toy teachers were trained on
        features = get_timestep_embedding(t, self.dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class FactorisedResBlock(nn.Module):
    """Per-frame 3x3 conv -> FiLM -> temporal conv (k=3) -> per-frame 3x3 conv, with a residual.

    Acts on ``[B, C, T, H, W]``.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.temporal = nn.Conv1d(cout, cout, 3, padding=1)
        self.norm3 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    @staticmethod
    def _frames(x: Tensor, module: nn.Module) -> Tensor:
        b, c, t, h, w = x.shape
        y = module(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)

    @staticmethod
    def _time(x: Tensor, module: nn.Module) -> Tensor:
        b, c, t, h, w = x.shape
        y = module(x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t))
        return y.reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self._frames(F.silu(self.norm1(x)), self.conv1)
        scale, shift = self.film(emb).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
        h = h + self._time(F.silu(h), self.temporal)
        h = self._frames(F.silu(self.norm3(h)), self.conv2)
        return self._frames(x, self.skip) + h


class ToyUNet(nn.Module):
    """Factorised (2+1)D UNet over ``[B, C, T, H, W]``; spatial down/up-sampling only (T is kept)."""

    def __init__(self, channels: int = 3, base: int = 32, mult: tuple[int, ...] = (1, 2, 4), text_dim: int = 64,
                 emb_dim: int = 128, mid_blocks: int = 2, frame_embedding: int = 32) -> None:
        super().__init__()
        widths = [base * m for m in mult]
        # Which frame comes first: without it the temporal convs are nearly symmetric in time and the net learns the
        # motion's axis but not its sign (measured: "left" and "right" each came out half the time).
        self.frame_embed = (nn.Parameter(0.02 * torch.randn(1, widths[0], frame_embedding, 1, 1))
                            if frame_embedding else None)
        self.time_embed = TimeEmbedding(emb_dim)
        self.text_proj = nn.Linear(text_dim, emb_dim)
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        cin = widths[0]
        for w in widths:
            self.down.append(FactorisedResBlock(cin, w, emb_dim))
            cin = w
        self.mid = nn.ModuleList(FactorisedResBlock(cin, cin, emb_dim) for _ in range(mid_blocks))
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(FactorisedResBlock(cin + w, w, emb_dim))
            cin = w
        self.out_norm = nn.GroupNorm(8, cin)
        self.out = nn.Conv2d(cin, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def blocks(self) -> list[nn.Module]:
        """All residual blocks in data-flow order (down, mid, up): the discriminator reads features here."""
        return [*self.down, *self.mid, *self.up]

    def forward(self, x: Tensor, t: Tensor, pooled: Tensor) -> Tensor:
        emb = F.silu(self.time_embed(t) + self.text_proj(pooled))
        h = FactorisedResBlock._frames(x, self.stem)
        if self.frame_embed is not None:
            if h.shape[2] > self.frame_embed.shape[2]:
                raise ValueError(f"{h.shape[2]} frames exceed the frame embedding's {self.frame_embed.shape[2]}")
            h = h + self.frame_embed[:, :, : h.shape[2]].to(h.dtype)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.down) - 1:
                h = FactorisedResBlock._frames(h, lambda f: F.avg_pool2d(f, 2))
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = FactorisedResBlock._frames(h, lambda f: F.interpolate(f, scale_factor=2, mode="nearest"))
            h = block(torch.cat([h, skip], dim=1), emb)
        return FactorisedResBlock._frames(F.silu(self.out_norm(h)), self.out)


class ToyBackbone(Backbone):
    """The toy world's teacher (and student): :class:`ToyUNet` + :class:`ToyTextEncoder`, pixel-space latents.

    Args:
        schedule: the noise schedule (flow for AccVideo's case, DDPM for T2V-Turbo's).
        base_channels, channel_mult, mid_blocks, emb_dim, text_dim: network size (defaults: ~1.6M parameters).
        frame_embedding: length of the learned per-frame embedding added after the stem (0: none); it tells the
            net which frame is first, so the caption can set the direction of motion, not only its axis.
        num_frames, size: default video size for sampling (8 frames of 16x16).
        steps, cfg: the teacher's own sampling settings.
    """

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        mid_blocks: int = 1,
        emb_dim: int = 128,
        text_dim: int = 64,
        frame_embedding: int = 32,
        num_frames: int = 8,
        size: int = 16,
        steps: int = 50,
        cfg: float = 3.0,
    ) -> None:
        super().__init__()
        self.schedule = schedule or FlowSchedule()
        self.denoiser = ToyUNet(3, base_channels, tuple(channel_mult), text_dim, emb_dim, mid_blocks, frame_embedding)
        self.text_encoder = ToyTextEncoder(text_dim)
        self.defaults = SamplingDefaults(steps=steps, cfg=cfg, num_frames=num_frames, height=size, width=size, fps=4)
        self.freeze_frozen_parts()

    def denoise(self, latents: Tensor, model_t: Tensor, text: TextCond) -> Tensor:
        # in the denoiser's dtype (a model cast to bf16, as DeepSpeed does, gets float32 latents from the solvers)
        dtype = self.denoiser.stem.weight.dtype
        return self.denoiser(latents.to(dtype), model_t, text["pooled"].to(dtype)).to(latents.dtype)

    def encode_text(self, prompts: list[str]) -> TextCond:
        return self.text_encoder(list(prompts))

    def encode_video(self, videos: Tensor) -> Tensor:
        return (videos * 2 - 1).permute(0, 2, 1, 3, 4)

    def decode_latents(self, latents: Tensor) -> Tensor:
        return ((latents.permute(0, 2, 1, 3, 4) + 1) / 2).clamp(0, 1)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return 3, num_frames, height, width

    def decode_frames(self, latents: Tensor, frames: Tensor) -> Tensor:
        return self.decode_frame_by_frame(latents, frames)

    def time_embedding(self) -> tuple[nn.Module, int]:
        return self.denoiser.time_embed, self.denoiser.time_embed.dim

    def feature_blocks(self) -> list[nn.Module]:
        return self.denoiser.blocks

    def feature_channels(self) -> list[int]:
        return [block.conv2.out_channels for block in self.denoiser.blocks]
