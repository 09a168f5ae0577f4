"""ModelScope T2V (``text-to-video-ms-1.7b``), the ModelScope teacher of T2V-Turbo.

A 3D UNet (diffusers ``UNet3DConditionModel``) on the latents of the Stable Diffusion image VAE applied frame by
frame (scaled by ``vae.config.scaling_factor`` = 0.18215), conditioned on the last hidden states of a CLIP text
encoder (77 tokens). A 1000-step scaled-linear DDPM schedule with epsilon prediction; the pipeline's defaults
are 50 DDIM steps at CFG 9.0, 16 frames of 256 x 256 at 8 fps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vdistill.backbones.base import Backbone, SamplingDefaults, TextCond, execution_device
from vdistill.backbones.diffusers_io import (
    check_model_folder,
    frozen_load_dtype,
    load_part,
    read_scheduler_config,
    resolve_dtype,
)
from vdistill.diffusion.schedules import DDPMSchedule, NoiseSchedule
from vdistill.errors import UserError

PARTS = ("unet", "vae", "text_encoder", "tokenizer")


def ddpm_schedule_from_config(cfg: dict) -> DDPMSchedule:
    """The :class:`DDPMSchedule` a diffusers scheduler config describes (defaults: scaled-linear, epsilon)."""
    return DDPMSchedule(
        beta_schedule=cfg.get("beta_schedule", "scaled_linear"),
        beta_start=cfg.get("beta_start"),
        beta_end=cfg.get("beta_end"),
        prediction_type=cfg.get("prediction_type", "epsilon"),
        num_train_timesteps=cfg.get("num_train_timesteps", 1000),
    )


class ModelScopeBackbone(Backbone):
    """ModelScope T2V: ``UNet3DConditionModel`` + per-frame ``AutoencoderKL`` + ``CLIPTextModel``.

    Args:
        path: local folder in the diffusers layout (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
            optionally ``scheduler/scheduler_config.json``), e.g. a snapshot of ``damo-vilab/text-to-video-ms-1.7b``.
        torch_dtype: dtype of the UNet and the text encoder (``float32``, ``bfloat16``, ``float16``).
        schedule: the noise schedule; ``None`` reads the folder's scheduler config (beta schedule and range,
            prediction type), falling back to scaled-linear 0.00085..0.012 with epsilon prediction.
        vae_dtype: dtype of the VAE; ``None`` takes ``torch_dtype``.
        max_text_length: tokens per prompt (CLIP's 77).
        gradient_checkpointing: recompute UNet activations in the backward pass (T2V-Turbo trains with it).
    """

    rebuilt_prefixes = ("text_encoder.", "vae.")
    defaults = SamplingDefaults(steps=50, cfg=9.0, num_frames=16, height=256, width=256, fps=8)

    def __init__(
        self,
        path: str,
        torch_dtype: str = "float32",
        schedule: NoiseSchedule | None = None,
        vae_dtype: str | None = None,
        max_text_length: int = 77,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKL, UNet3DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        root = check_model_folder(path, PARTS, "ModelScope")
        dtype = resolve_dtype(torch_dtype)
        self.denoiser = load_part(UNet3DConditionModel, root, "unet", torch_dtype=dtype)
        self.vae = load_part(AutoencoderKL, root, "vae", torch_dtype=frozen_load_dtype(vae_dtype, dtype))
        self.text_encoder = load_part(CLIPTextModel, root, "text_encoder", dtype=dtype)
        self.tokenizer = load_part(CLIPTokenizer, root, "tokenizer")
        self.schedule = schedule if schedule is not None else ddpm_schedule_from_config(read_scheduler_config(root))
        self.max_text_length = max_text_length
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()
        self.freeze_frozen_parts()

    @property
    def unet(self) -> nn.Module:
        return self.denoiser

    @property
    def vae_scale(self) -> int:
        """Spatial down-sampling of the VAE (8 for the SD VAE: one halving per block after the first)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- the network -------------------------------------------------------------------------------------
    def denoise(self, latents: Tensor, model_t: Tensor, text: TextCond) -> Tensor:
        """Epsilon ``[B, C, T, H, W]`` for latents ``[B, C, T, H, W]`` at DDPM indices ``model_t`` ``[B]``."""
        dtype = self.denoiser.dtype
        out = self.denoiser(
            latents.to(dtype),
            model_t,
            encoder_hidden_states=text["states"].to(latents.device, dtype),
            return_dict=False,
        )[0]
        return out.to(latents.dtype)

    def time_embedding(self) -> tuple[nn.Module, int]:
        # The UNet repeats the [B, D] embedding over frames only after this module, so the hook sees [B, D].
        module = self.denoiser.time_embedding
        return module, module.linear_2.out_features

    def feature_blocks(self) -> list[nn.Module]:
        unet = self.denoiser
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]

    def feature_channels(self) -> list[int]:
        return [block.resnets[-1].out_channels for block in self.feature_blocks()]

    def feature_frames(self, output: Tensor | tuple, latents: Tensor) -> Tensor:
        """The UNet runs on frames folded into the batch (``[B * T, C, h, w]``; down blocks also return their
        skips): ``[B, T, C, h, w]``."""
        out = output[0] if isinstance(output, (tuple, list)) else output
        return out.unflatten(0, (latents.shape[0], latents.shape[2]))

    # -- text ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextCond:
        """``{"states": [B, 77, D]}``: CLIP's last hidden states of the padded prompts (as the pipeline does)."""
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_text_length, truncation=True,
            return_tensors="pt",
        )
        device = execution_device(self.text_encoder)
        mask = tokens.attention_mask.to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) \
            else None
        states = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return {"states": states}

    def step_noise(self, shape: Sequence[int], generator: torch.Generator) -> Tensor:
        # TextToVideoSDPipeline steps its scheduler on frames as a batch ([T', C, H', W']), so LCMScheduler draws
        # each step's noise frames first
        c, t, h, w = shape
        return torch.randn(t, c, h, w, generator=generator).transpose(0, 1)

    def decode_frames(self, latents: Tensor, frames: Tensor) -> Tensor:
        """Only the frames asked for: the image VAE decodes each latent frame alone (a reward's critics score a
        few of the video's frames, T2V-Turbo)."""
        return self.decode_frame_by_frame(latents, frames)

    # -- pixels <-> latents --------------------------------------------------------------------------------
    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        s = self.vae_scale
        if height % s or width % s:
            raise UserError(f"ModelScope video size must be a multiple of {s} pixels, got {height} x {width}")
        return self.vae.config.latent_channels, num_frames, height // s, width // s

    @torch.no_grad()
    def encode_video(self, videos: Tensor) -> Tensor:
        """Pixels ``[B, T, 3, H, W]`` in [0, 1] -> scaled latents ``[B, C, T, H/8, W/8]`` (posterior mean)."""
        b, t = videos.shape[:2]
        frames = videos.flatten(0, 1).to(self.vae.device, self.vae.dtype) * 2 - 1
        z = self.vae.encode(frames).latent_dist.mode() * self.vae.config.scaling_factor
        return z.unflatten(0, (b, t)).transpose(1, 2)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents ``[B, C, T, h, w]`` -> pixels ``[B, T, 3, 8h, 8w]`` in [0, 1], frame by frame (pipeline's
        ``decode_latents``), differentiable for reward losses."""
        b, _, t = latents.shape[:3]
        z = latents.transpose(1, 2).flatten(0, 1).to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor
        frames = self.vae.decode(z).sample
        return (frames.unflatten(0, (b, t)).float() / 2 + 0.5).clamp(0, 1)
