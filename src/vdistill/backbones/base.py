"""One interface for a text-to-video diffusion model (teacher or student).

A :class:`Backbone` bundles the trainable denoiser with its frozen parts:

* ``denoiser``: the network (the part a student fine-tunes or puts LoRA on),
* ``schedule``: its :class:`~vdistill.diffusion.NoiseSchedule`,
* a VAE: pixels ``[B, T, 3, H, W]`` in [0, 1] <-> latents ``[B, C, T', H', W']``,
* a text encoder: ``list[str]`` -> a dict of tensors (the "text conditioning", batch first).

All times ``t`` given to a backbone are the schedule's (DDPM index, or flow sigma); the backbone converts them
to the network's units with ``schedule.model_timestep``. Text conditioning is a ``dict[str, Tensor]`` so it can be
stored as it is in safetensors shards and batched with :func:`cat_text`.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vdistill.config import RecordsInit
from vdistill.diffusion.guidance import apply_cfg, guidance_scale_embedding
from vdistill.diffusion.schedules import NoiseSchedule
from vdistill.errors import UserError

TextCond = dict[str, Tensor]


def cat_text(*conds: TextCond) -> TextCond:
    """Concatenate text conditionings along the batch dimension (same keys required)."""
    keys = set(conds[0])
    for c in conds[1:]:
        if set(c) != keys:
            raise ValueError(f"text conditionings have different keys: {sorted(keys)} vs {sorted(c)}")
    return {k: torch.cat([c[k] for c in conds], dim=0) for k in conds[0]}


def expand_text(cond: TextCond, batch: int) -> TextCond:
    """Repeat a batch-1 conditioning (e.g. the empty prompt) to ``batch`` rows."""
    return {k: v.expand(batch, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in cond.items()}


def index_text(cond: TextCond, index: Tensor | slice) -> TextCond:
    return {k: v[index] for k, v in cond.items()}


def text_to(cond: TextCond, device: torch.device | str, dtype: torch.dtype | None = None) -> TextCond:
    """Move a conditioning; floating tensors are cast to ``dtype`` when given, masks and ids keep theirs."""
    return {k: v.to(device, dtype if (dtype is not None and v.is_floating_point()) else v.dtype)
            for k, v in cond.items()}


def _checkpointed(module: nn.Module, forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, module, *args, use_reentrant=False, **kwargs)
    return forward(module, *args, **kwargs)


def checkpoint_forward(module: nn.Module) -> None:
    """Make ``module`` recompute its activations in the backward pass (non-reentrant ``torch.utils.checkpoint``)
    whenever gradients are on; its parameter names and forward hooks are unchanged (hooks see one call).

    A ``functools.partial`` holding the module, not a closure: ``copy.deepcopy`` rebinds it to the copy (a student
    made from a checkpointed teacher checkpoints its own blocks, not the teacher's).
    """
    if not isinstance(module.__dict__.get("forward"), functools.partial):
        module.forward = functools.partial(_checkpointed, module, type(module).forward)


@dataclass(frozen=True)
class SamplingDefaults:
    """The teacher's own sampling settings (steps, CFG scale, video size in pixels)."""

    steps: int = 50
    cfg: float = 7.5
    num_frames: int = 16
    height: int = 256
    width: int = 256
    fps: int = 8


class Backbone(RecordsInit, nn.Module, ABC):
    """Base class of teacher / student models; see the module docstring for the contract."""

    denoiser: nn.Module
    schedule: NoiseSchedule
    defaults: SamplingDefaults
    #: state-dict prefixes the constructor rebuilds from its own arguments (the frozen text encoder and VAE of a
    #: diffusers folder): exports leave them out.
    rebuilt_prefixes: tuple[str, ...] = ()
    #: a distilled student's own sampling grid (its key timesteps, noisiest first, clean last; see
    #: :meth:`set_key_timesteps`); ``None``: the schedule's grid for the requested number of steps.
    key_timesteps: tuple[float, ...] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._guidance_emb: Tensor | None = None
        self.guidance_proj: nn.Linear | None = None
        self._guidance_hook = None

    # -- what each family provides ----------------------------------------------------------------------
    @abstractmethod
    def denoise(self, latents: Tensor, model_t: Tensor, text: TextCond) -> Tensor:
        """Raw network output for latents ``[B, C, T, H, W]`` at network timesteps ``model_t`` ``[B]``."""

    @abstractmethod
    def encode_text(self, prompts: list[str]) -> TextCond:
        """Text conditioning for ``prompts`` (the empty string is the unconditional prompt)."""

    @abstractmethod
    def encode_video(self, videos: Tensor) -> Tensor:
        """Pixels ``[B, T, 3, H, W]`` in [0, 1] -> latents ``[B, C, T', H', W']`` (deterministic: the mean)."""

    @abstractmethod
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents ``[B, C, T', H', W']`` -> pixels ``[B, T, 3, H, W]`` in [0, 1] (differentiable)."""

    @abstractmethod
    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, T', H', W')`` of the latents of a ``num_frames x height x width`` video."""

    def step_noise(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        """Fresh noise ``shape`` = ``(C, T', H', W')`` for one sample between the steps of a multistep sampler
        (the consistency sampler), drawn in the order the family's diffusers pipeline draws it so that the exported
        pipeline, seeded alike, samples the same video."""
        return torch.randn(*shape, generator=generator)

    @abstractmethod
    def time_embedding(self) -> tuple[nn.Module, int]:
        """The module whose output ``[B, D]`` is the denoiser's timestep embedding, and ``D``."""

    # -- features for a discriminator (the frozen teacher as feature extractor, AccVideo Sec. 4.3) ----------
    def feature_blocks(self) -> list[nn.Module]:
        """The denoiser's main blocks in data-flow order; a discriminator reads their outputs with hooks."""
        raise UserError(f"{type(self).__name__} exposes no feature blocks, so it cannot serve as a discriminator's "
                        "feature extractor (implement feature_blocks, feature_channels and feature_frames)")

    def feature_channels(self) -> list[int]:
        """Channels of each feature block's output (aligned with :meth:`feature_blocks`)."""
        raise UserError(f"{type(self).__name__} does not report its feature channels")

    def feature_frames(self, output: Tensor | tuple, latents: Tensor) -> Tensor:
        """A feature block's output as per-frame maps ``[B, T', C, h, w]``, given the denoiser's input latents
        ``[B, C, T, H, W]``. Default: blocks that return ``[B, C, T', h, w]`` (or a tuple starting with it)."""
        out = output[0] if isinstance(output, (tuple, list)) else output
        if out.ndim != 5:
            raise UserError(f"{type(self).__name__}: cannot read a {out.ndim}-D block output as frames; "
                            "implement feature_frames for this family")
        return out.transpose(1, 2)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the denoiser's block activations in the backward pass (less memory, about one more forward of
        compute): the denoiser's own ``enable_gradient_checkpointing()`` where it has one that works (diffusers'
        Wan transformer), else each of :meth:`feature_blocks` through :func:`checkpoint_forward` (the toy UNet;
        diffusers' ``UNet3DConditionModel`` declares no support and its 3D blocks ignore the flag)."""
        if getattr(self.denoiser, "_supports_gradient_checkpointing", False):
            self.denoiser.enable_gradient_checkpointing()
            return
        for block in self.feature_blocks():
            checkpoint_forward(block)

    def set_key_timesteps(self, timesteps: Sequence[float]) -> None:
        """Make a distilled student sample along its key timesteps (``len - 1`` steps, noisiest first) without
        classifier-free guidance by default: the teacher's guidance was distilled into it."""
        self.key_timesteps = tuple(float(t) for t in timesteps)
        self.defaults = replace(self.defaults, steps=len(self.key_timesteps) - 1, cfg=1.0)

    # -- shared behaviour -------------------------------------------------------------------------------
    def forward(self, latents: Tensor, t: Tensor, text: TextCond, guidance: Tensor | None = None) -> Tensor:
        """Raw prediction at schedule times ``t`` ``[B]``; ``guidance`` ``[B]`` needs the guidance embedding."""
        if guidance is not None:
            if self.guidance_proj is None:
                raise UserError("this model has no guidance-scale embedding; call enable_guidance_embedding() first")
            self._guidance_emb = guidance_scale_embedding(guidance.to(latents.device), self.guidance_proj.in_features)
        t = t.to(latents.device).float().reshape(-1).expand(latents.shape[0])
        try:
            return self.denoise(latents, self.schedule.model_timestep(t), text)
        finally:
            self._guidance_emb = None

    def enable_guidance_embedding(self, dim: int = 256) -> nn.Linear:
        """Add the LCM guidance-scale embedding: a zero-initialised bias-free projection of the 256-dim
        sinusoidal embedding of ``w`` added to the timestep embedding (T2V-Turbo), so the model is unchanged
        until it is trained."""
        if self.guidance_proj is not None:
            return self.guidance_proj
        module, width = self.time_embedding()
        ref = next(module.parameters())
        self.guidance_proj = nn.Linear(dim, width, bias=False, device=ref.device, dtype=ref.dtype)
        nn.init.zeros_(self.guidance_proj.weight)

        def add_guidance(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
            if self._guidance_emb is None:
                return output
            proj = self.guidance_proj  # float32 in a LoRA student of a half-precision teacher (make_student)
            extra = proj(self._guidance_emb.to(proj.weight.dtype)).to(output.dtype)
            return output + extra.reshape(extra.shape[0], *([1] * (output.ndim - 2)), extra.shape[1])

        self._guidance_hook = module.register_forward_hook(add_guidance)
        return self.guidance_proj

    @property
    def has_guidance_embedding(self) -> bool:
        return self.guidance_proj is not None

    def predict(
        self,
        latents: Tensor,
        t: Tensor,
        text: TextCond,
        uncond: TextCond | None = None,
        cfg: float | Tensor = 1.0,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """Raw prediction with classifier-free guidance as ONE batched forward (``cfg == 1`` or no ``uncond``:
        a plain forward)."""
        if uncond is None or (not isinstance(cfg, Tensor) and cfg == 1.0):
            return self(latents, t, text, guidance)
        b = latents.shape[0]
        t = t.to(latents.device).float().reshape(-1).expand(b)
        both = cat_text(expand_text(uncond, b), text)
        g = None if guidance is None else guidance.repeat(2)
        raw_u, raw_c = self(torch.cat([latents, latents]), torch.cat([t, t]), both, g).chunk(2)
        return apply_cfg(raw_c, raw_u, cfg)

    def export_state_dict(self) -> dict[str, Tensor]:
        """The weights an export must carry: everything but what the constructor rebuilds."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.rebuilt_prefixes)}

    def frozen_parts(self) -> list[nn.Module]:
        """Modules never trained by distillation (text encoder, VAE): frozen once, where they are built."""
        return [m for m in (getattr(self, "text_encoder", None), getattr(self, "vae", None)) if m is not None]

    def freeze_frozen_parts(self) -> None:
        for m in self.frozen_parts():
            m.requires_grad_(False)
            m.eval()

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for m in self.frozen_parts():  # the frozen encoders stay in eval mode (no dropout)
            if not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self
