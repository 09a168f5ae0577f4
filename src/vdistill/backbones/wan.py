"""Wan2.1 text-to-video (the family AccVideo distils): a flow-matching DiT on a causal 3D VAE, UMT5 text.

diffusers ``WanTransformer3DModel`` predicts the velocity ``eps - x0`` at ``1000 * sigma``; the latents are those
of ``AutoencoderKLWan`` (4x temporal compression: ``1 + 4k`` frames -> ``1 + k`` latent frames; 8x spatial),
normalised per channel with the VAE config's ``latents_mean`` / ``latents_std`` as ``WanPipeline`` does. The text
conditioning is UMT5's last hidden states, zeroed past each prompt's length (``_get_t5_prompt_embeds``). Sampling
defaults are the Wan 480p ones: 50 steps, CFG 5.0, 81 frames of 480 x 832 at 16 fps, flow shift 3.0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vdistill.backbones.base import Backbone, SamplingDefaults, TextCond, execution_device
from vdistill.backbones.diffusers_io import check_model_folder, load_part, read_scheduler_config, resolve_dtype
from vdistill.diffusion.schedules import FlowSchedule, NoiseSchedule
from vdistill.errors import UserError

PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
DEFAULT_SHIFT = 3.0  # Wan 480p; 720p uses 5.0


def flow_schedule_from_config(cfg: dict, default_shift: float = DEFAULT_SHIFT) -> FlowSchedule:
    """The :class:`FlowSchedule` of a diffusers scheduler config: UniPC's ``flow_shift`` (Wan's diffusers
    folders), else FlowMatchEuler's ``shift``, else ``default_shift``."""
    shift = cfg.get("flow_shift", cfg.get("shift"))
    return FlowSchedule(shift=default_shift if shift is None else float(shift))


def prompt_clean(text: str) -> str:
    """Wan's prompt cleaning (``pipeline_wan.prompt_clean``): ftfy when installed, HTML unescape, whitespace."""
    import html
    import re

    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


class WanBackbone(Backbone):
    """Wan2.1 T2V: ``WanTransformer3DModel`` + ``AutoencoderKLWan`` + ``UMT5EncoderModel``.

    Args:
        path: local folder in the diffusers layout (``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
            optionally ``scheduler/scheduler_config.json``), e.g. a snapshot of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``.
        torch_dtype: dtype of the transformer and the text encoder (``float32``, ``bfloat16``, ``float16``).
        schedule: the noise schedule; ``None`` builds a :class:`FlowSchedule` with the folder's flow shift
            (3.0 when the scheduler config names none).
        vae_dtype: dtype of the VAE; float32 by default, as the Wan pipeline's example loads it.
        max_text_length: text tokens per prompt (the pipeline's 512).
        gradient_checkpointing: recompute transformer activations in the backward pass.
    """

    rebuilt_prefixes = ("text_encoder.", "vae.")
    defaults = SamplingDefaults(steps=50, cfg=5.0, num_frames=81, height=480, width=832, fps=16)

    def __init__(
        self,
        path: str,
        torch_dtype: str = "float32",
        schedule: NoiseSchedule | None = None,
        vae_dtype: str = "float32",
        max_text_length: int = 512,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = check_model_folder(path, PARTS, "Wan")
        dtype = resolve_dtype(torch_dtype)
        self.denoiser = load_part(WanTransformer3DModel, root, "transformer", torch_dtype=dtype)
        self.vae = load_part(AutoencoderKLWan, root, "vae", torch_dtype=resolve_dtype(vae_dtype))
        self.text_encoder = load_part(UMT5EncoderModel, root, "text_encoder", dtype=dtype)
        self.tokenizer = load_part(AutoTokenizer, root, "tokenizer")
        self.schedule = schedule if schedule is not None else flow_schedule_from_config(read_scheduler_config(root))
        self.max_text_length = max_text_length
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.freeze_frozen_parts()

    @property
    def transformer(self) -> nn.Module:
        return self.denoiser

    # -- the network -------------------------------------------------------------------------------------
    def denoise(self, latents: Tensor, model_t: Tensor, text: TextCond) -> Tensor:
        """Velocity ``[B, C, T, H, W]`` for latents ``[B, C, T, H, W]`` at ``model_t = 1000 * sigma`` ``[B]``."""
        dtype = self.denoiser.dtype
        out = self.denoiser(
            hidden_states=latents.to(dtype),
            timestep=model_t,
            encoder_hidden_states=text["states"].to(latents.device, dtype),
            return_dict=False,
        )[0]
        return out.to(latents.dtype)

    def time_embedding(self) -> tuple[nn.Module, int]:
        # condition_embedder.time_embedder maps the sinusoidal timestep to temb [B, inner_dim]; both the
        # per-block modulation (time_proj) and the output norm's shift/scale are computed from temb.
        module = self.denoiser.condition_embedder.time_embedder
        return module, module.linear_2.out_features

    def feature_blocks(self) -> list[nn.Module]:
        return list(self.denoiser.blocks)

    def feature_channels(self) -> list[int]:
        cfg = self.denoiser.config
        return [cfg.num_attention_heads * cfg.attention_head_dim] * len(self.denoiser.blocks)

    def feature_frames(self, output: Tensor | tuple, latents: Tensor) -> Tensor:
        """Block tokens ``[B, T' * h * w, D]`` (patches in (frame, row, column) order, as the patch embedding
        flattens them) -> ``[B, T', D, h, w]``."""
        out = output[0] if isinstance(output, (tuple, list)) else output
        p_t, p_h, p_w = self.denoiser.config.patch_size
        b, _, t, h, w = latents.shape
        return out.reshape(b, t // p_t, h // p_h, w // p_w, out.shape[-1]).permute(0, 1, 4, 2, 3)

    # -- text ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextCond:
        """``{"states": [B, L, D]}`` with ``L = max_text_length``: UMT5 states of each prompt's tokens, zeros past
        its length (``WanPipeline._get_t5_prompt_embeds``)."""
        tokens = self.tokenizer(
            [prompt_clean(p) for p in prompts], padding="max_length", max_length=self.max_text_length,
            truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        device = execution_device(self.text_encoder)
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        states = self.text_encoder(ids, mask).last_hidden_state
        keep = torch.arange(states.shape[1], device=device)[None, :] < mask.gt(0).sum(dim=1, keepdim=True)
        return {"states": states.masked_fill(~keep[..., None], 0.0)}

    # -- pixels <-> latents --------------------------------------------------------------------------------
    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + self.vae.config.scale_factor_temporal * (latent_frames - 1)

    def decode_frames(self, latents: Tensor, frames: Tensor) -> Tensor:
        """The latents up to the last one the frames need (the causal 3D VAE: later latent frames do not change
        earlier pixels), then the frames."""
        return self.decode_causal_prefix(latents, frames, self.vae.config.scale_factor_temporal)

    def _latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, 1 / std)`` shaped ``[1, C, 1, 1, 1]``, as the pipeline builds them."""
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        ft, fs = self.vae.config.scale_factor_temporal, self.vae.config.scale_factor_spatial
        patch = self.denoiser.config.patch_size
        if num_frames % ft != 1:
            raise UserError(f"Wan videos have 1 + {ft}k frames (e.g. 81), got {num_frames}")
        if height % (fs * patch[1]) or width % (fs * patch[2]):
            raise UserError(f"Wan video size must be a multiple of {fs * patch[1]} pixels, got {height} x {width}")
        return self.vae.config.z_dim, (num_frames - 1) // ft + 1, height // fs, width // fs

    @torch.no_grad()
    def encode_video(self, videos: Tensor) -> Tensor:
        """Pixels ``[B, T, 3, H, W]`` in [0, 1] (``T = 1 + 4k``) -> normalised latents ``[B, C, 1 + k, H/8, W/8]``
        (posterior mean)."""
        x = videos.transpose(1, 2).to(self.vae.device, self.vae.dtype) * 2 - 1
        z = self.vae.encode(x).latent_dist.mode()
        mean, inv_std = self._latent_stats(z)
        return (z - mean) * inv_std

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Normalised latents ``[B, C, 1 + k, h, w]`` -> pixels ``[B, 1 + 4k, 3, 8h, 8w]`` in [0, 1]
        (differentiable; the VAE decodes causally, one latent frame at a time)."""
        z = latents.to(self.vae.device, self.vae.dtype)
        mean, inv_std = self._latent_stats(z)
        video = self.vae.decode(z / inv_std + mean, return_dict=False)[0]
        return (video.float() / 2 + 0.5).clamp(0, 1).transpose(1, 2)
