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


def _gather(videos: Tensor, frames: Tensor) -> Tensor:
    """``videos[b, frames[b]]``: ``[B, T, ...]`` and ``[B, n]`` -> ``[B, n, ...]``."""
    rows = torch.arange(videos.shape[0], device=videos.device)[:, None]
    return videos[rows, frames.to(videos.device)]


def checkpoint_marked_block(block: nn.Module, *args):
    """A diffusers ``_gradient_checkpointing_func`` for selective checkpointing: the blocks marked
    ``vdistill_checkpoint`` run under non-reentrant ``torch.utils.checkpoint`` (as diffusers' default function runs
    every block), the others as plain calls. A module-level function, so a deep copy of the model keeps it."""
    if getattr(block, "vdistill_checkpoint", False):
        return checkpoint(block.__call__, *args, use_reentrant=False)
    return block(*args)


class OnDemand:
    """Keep a frozen ``module`` on ``offload_device`` (the CPU) and bring it to the compute device only for its
    forward calls: a forward pre-hook moves it there (and the call's tensors with it); with ``after_call`` a forward
    hook sends it back at once (text encoders: their output needs no weights), else :meth:`release` does, once the
    step's backward no longer needs the weights (critics scored with gradients).

    Nothing moves until :attr:`compute_device` is set (the distillation module sets it at the start of a fit).
    ``moves`` lists ``"in"`` / ``"out"`` in order: one ``module.to`` each.
    """

    def __init__(self, module: nn.Module, offload_device: str | torch.device = "cpu", after_call: bool = True) -> None:
        self.module, self.offload_device = module, torch.device(offload_device)
        self.compute_device: torch.device | None = None
        self.resident = True  # where it was built: moved out by the first release()
        self.moves: list[str] = []
        module.vdistill_on_demand = self
        module.register_forward_pre_hook(self._bring, with_kwargs=True)
        if after_call:
            module.register_forward_hook(lambda *_: self.release())

    def _bring(self, _module: nn.Module, args: tuple, kwargs: dict):
        if self.compute_device is None:
            return None
        if not self.resident:
            self.module.to(self.compute_device)
            self.resident = True
            self.moves.append("in")
        dev = self.compute_device
        return torch.utils._pytree.tree_map_only(Tensor, lambda x: x.to(dev), (args, kwargs))

    def release(self) -> None:
        """Send the module back to the offload device (a no-op when it is there, or before a compute device)."""
        if self.resident and self.compute_device is not None:
            self.module.to(self.offload_device)
            self.resident = False
            self.moves.append("out")


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its :class:`OnDemand` compute device when it is held off the device between
    calls, else where its parameters are."""
    holder = getattr(module, "vdistill_on_demand", None)
    if holder is not None and holder.compute_device is not None:
        return holder.compute_device
    return next(module.parameters()).device


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

    def pixel_frames(self, latent_frames: int) -> int:
        """Frames of the video :meth:`decode_latents` makes of ``latent_frames`` latent frames (the same number
        unless the VAE compresses time: Wan's and HunyuanVideo's ``1 + 4k`` from ``1 + k``)."""
        return latent_frames

    def decode_frames(self, latents: Tensor, frames: Tensor) -> Tensor:
        """Pixels ``[B, n, 3, H, W]`` in [0, 1] of the frames ``frames`` ``[B, n]`` (indices into the ``T`` of
        ``decode_latents(latents)``, per video) of latents ``[B, C, T', h, w]``, differentiable: equal to
        ``decode_latents(latents)[b, frames[b]]``, decoding no more than the family's VAE needs. Default: the whole
        video, then the frames; families override it (:meth:`decode_frame_by_frame`,
        :meth:`decode_causal_prefix`)."""
        return _gather(self.decode_latents(latents), frames)

    def decode_frame_by_frame(self, latents: Tensor, frames: Tensor) -> Tensor:
        """:meth:`decode_frames` for a VAE that decodes each latent frame alone (pixel frame ``i`` is latent frame
        ``i``: the toy's affine map, ModelScope's image VAE): each distinct ``(video, frame)`` pair is decoded once,
        as a batch of one-frame videos."""
        b, _, t = latents.shape[:3]
        keys = (torch.arange(b, device=frames.device)[:, None] * t + frames).flatten()
        unique, inverse = torch.unique(keys, return_inverse=True)
        single = latents.transpose(1, 2).flatten(0, 1)[unique.to(latents.device)].unsqueeze(2)  # [U, C, 1, h, w]
        pixels = self.decode_latents(single)[:, 0]  # [U, 3, H, W]
        return pixels[inverse.to(pixels.device)].unflatten(0, frames.shape)

    def decode_causal_prefix(self, latents: Tensor, frames: Tensor, compression: int) -> Tensor:
        """:meth:`decode_frames` for a causal video VAE with ``compression``-fold temporal compression (pixel frame 0
        from latent frame 0, pixel frames ``1 + c(k-1) .. ck`` from latent frame ``k``): pixel frames depend on
        their latent frame and the earlier ones only, so decoding the latents up to the last one needed gives the
        same frames (the later latent frames are not decoded)."""
        last = int(frames.max())
        needed = 0 if last == 0 else (last - 1) // compression + 1
        return _gather(self.decode_latents(latents[:, :, : needed + 1]), frames)

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

    def enable_gradient_checkpointing(self, every: int = 1) -> None:
        """Recompute the denoiser's block activations in the backward pass (less memory, about one more forward of
        compute): the denoiser's own ``enable_gradient_checkpointing()`` where it has one that works (diffusers'
        Wan and HunyuanVideo transformers), else each of :meth:`feature_blocks` through :func:`checkpoint_forward`
        (the toy UNet; diffusers' ``UNet3DConditionModel`` declares no support and its 3D blocks ignore the flag).

        Args:
            every: selective activation checkpointing: only blocks ``0, k, 2k, ...`` of :meth:`feature_blocks`
                (``k = every``) recompute, the others keep their activations: about ``1 / k`` of the recompute cost
                for ``1 / k`` of the saving. A diffusers transformer keeps its own loop: its
                ``_gradient_checkpointing_func`` (:func:`checkpoint_marked_block`) checkpoints the marked blocks
                and calls the others plainly.
        """
        if every < 1:
            raise UserError(f"checkpoint_every must be >= 1 (1: every block), got {every}")
        supported = getattr(self.denoiser, "_supports_gradient_checkpointing", False)
        if every == 1 and supported:
            self.denoiser.enable_gradient_checkpointing()
            return
        for i, block in enumerate(self.feature_blocks()):
            if i % every:
                continue
            if supported:
                block.vdistill_checkpoint = True  # an attribute: a deep copy (the student) keeps the choice
            else:
                checkpoint_forward(block)
        if supported:
            self.denoiser.enable_gradient_checkpointing(checkpoint_marked_block)

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
