"""HunyuanVideo text-to-video (AccVideo's main teacher): a guidance-distilled flow-matching DiT on a causal 3D VAE,
conditioned on a Llama encoder's hidden states and CLIP's pooled text embedding.

As ``diffusers.HunyuanVideoPipeline`` runs it:

* ``HunyuanVideoTransformer3DModel`` predicts the velocity ``eps - x0`` at ``1000 * sigma`` (20 dual-stream and 40
  single-stream blocks in the 13B release);
* the text is the Llama state ``num_hidden_layers_to_skip = 2`` layers before the last (``hidden_states[-3]``) of
  the prompt wrapped in the pipeline's ``DEFAULT_PROMPT_TEMPLATE`` (a system message asking for a detailed video
  description), cropped past the template's first ``crop_start = 95`` tokens, ``max_sequence_length = 256``
  tokens kept, with their attention mask; plus CLIP-L's pooled output (77 tokens) for the modulation;
* the latents are ``AutoencoderKLHunyuanVideo``'s scaled by ``vae.config.scaling_factor`` (0.476986): 4x temporal
  compression (``1 + 4k`` frames -> ``1 + k`` latent frames), 8x spatial, 16 channels;
* the released model is guidance-distilled: its transformer embeds the guidance scale (``guidance`` input, fed
  ``scale * 1000`` like a timestep) and the pipeline's default is embedded guidance 6.0 with true CFG off
  (``true_cfg_scale = 1``); sampling defaults: 50 Euler steps, flow shift 7.0 (the released scheduler config,
  the official repository's ``--flow-shift 7.0``), 129 frames of 720 x 1280 at 24 fps.

Embedded guidance and :class:`~vdistill.backbones.base.Backbone`'s ``guidance`` argument: here ``guidance`` ``[B]``
is the transformer's own input (sampling ``guidance=w`` is the pipeline's ``guidance_scale=w``; ``None``: the
backbone's ``embedded_guidance``, 6.0). Where a student also gets the LCM guidance projection
(:meth:`~vdistill.backbones.base.Backbone.enable_guidance_embedding`, zero-initialised on the time embedding), the
same scale feeds both, so the student starts as the teacher at that embedded scale.
"""

from __future__ import annotations

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
from vdistill.backbones.wan import flow_schedule_from_config
from vdistill.diffusion.schedules import NoiseSchedule
from vdistill.errors import UserError

PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
DEFAULT_SHIFT = 7.0  # HunyuanVideo's released scheduler config (official --flow-shift 7.0)
DEFAULT_EMBEDDED_GUIDANCE = 6.0  # HunyuanVideoPipeline's guidance_scale (official --embedded-cfg-scale 6.0)
LLAMA_LAYERS_TO_SKIP = 2  # HunyuanVideoPipeline._get_llama_prompt_embeds(num_hidden_layers_to_skip=2)
CLIP_LENGTH = 77  # HunyuanVideoPipeline.encode_prompt: CLIP tokens


def prompt_template() -> dict:
    """The pipeline's own Llama prompt template (``template`` with one ``{}``, ``crop_start``)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return DEFAULT_PROMPT_TEMPLATE


class HunyuanVideoBackbone(Backbone):
    """HunyuanVideo T2V: ``HunyuanVideoTransformer3DModel`` + ``AutoencoderKLHunyuanVideo`` + Llama and CLIP text.

    Args:
        path: local folder in the diffusers layout (``transformer/``, ``vae/``, ``text_encoder/`` (``LlamaModel``),
            ``tokenizer/``, ``text_encoder_2/`` (``CLIPTextModel``), ``tokenizer_2/``, optionally
            ``scheduler/scheduler_config.json``), e.g. a snapshot of ``hunyuanvideo-community/HunyuanVideo``.
        torch_dtype: dtype of the transformer and both text encoders (``float32``, ``bfloat16``, ``float16``).
        schedule: the noise schedule; ``None`` builds a :class:`~vdistill.diffusion.schedules.FlowSchedule` with
            the folder's ``shift`` (7.0 when the scheduler config names none).
        vae_dtype: dtype of the VAE; ``None`` takes ``torch_dtype``.
        max_text_length: Llama tokens per prompt after the template's crop (the pipeline's 256).
        embedded_guidance: the embedded guidance scale fed to the transformer when a call gives none (the
            pipeline's 6.0; module docstring).
        vae_tiling: decode (and encode) in overlapping spatial tiles (``vae.enable_tiling()``, which the
            pipeline's example turns on for 720p: an untiled 129 x 720 x 1280 decode does not fit one GPU).
        gradient_checkpointing: recompute transformer activations in the backward pass.
    """

    rebuilt_prefixes = ("text_encoder.", "text_encoder_2.", "vae.")
    defaults = SamplingDefaults(steps=50, cfg=1.0, num_frames=129, height=720, width=1280, fps=24)

    def __init__(
        self,
        path: str,
        torch_dtype: str = "float32",
        schedule: NoiseSchedule | None = None,
        vae_dtype: str | None = None,
        max_text_length: int = 256,
        embedded_guidance: float = DEFAULT_EMBEDDED_GUIDANCE,
        vae_tiling: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, LlamaModel

        root = check_model_folder(path, PARTS, "HunyuanVideo")
        dtype = resolve_dtype(torch_dtype)
        self.denoiser = load_part(HunyuanVideoTransformer3DModel, root, "transformer", torch_dtype=dtype)
        self.vae = load_part(AutoencoderKLHunyuanVideo, root, "vae", torch_dtype=frozen_load_dtype(vae_dtype, dtype))
        self.text_encoder = load_part(LlamaModel, root, "text_encoder", dtype=dtype)
        self.tokenizer = load_part(AutoTokenizer, root, "tokenizer")
        self.text_encoder_2 = load_part(CLIPTextModel, root, "text_encoder_2", dtype=dtype)
        self.tokenizer_2 = load_part(CLIPTokenizer, root, "tokenizer_2")
        self.schedule = schedule if schedule is not None else flow_schedule_from_config(
            read_scheduler_config(root), default_shift=DEFAULT_SHIFT)
        self.max_text_length = int(max_text_length)
        self.embedded_guidance = float(embedded_guidance)
        self._embedded_scale: Tensor | None = None
        if vae_tiling:
            self.vae.enable_tiling()
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
        self.freeze_frozen_parts()

    @property
    def transformer(self) -> nn.Module:
        return self.denoiser

    @property
    def embeds_guidance(self) -> bool:
        """Whether the transformer has its own guidance input (``guidance_embeds``: the released T2V model)."""
        return bool(self.denoiser.config.guidance_embeds)

    def frozen_parts(self) -> list[nn.Module]:
        return [self.text_encoder, self.text_encoder_2, self.vae]

    # -- the network -------------------------------------------------------------------------------------
    def forward(self, latents: Tensor, t: Tensor, text: TextCond, guidance: Tensor | None = None) -> Tensor:
        """Raw prediction at schedule times ``t`` ``[B]``; ``guidance`` ``[B]``: the embedded guidance scale
        (``None``: :attr:`embedded_guidance`), fed to the transformer's guidance input and, when the student has
        one, to the LCM guidance projection too (module docstring)."""
        if not self.embeds_guidance:
            return super().forward(latents, t, text, guidance)
        b = latents.shape[0]
        scale = torch.full((b,), self.embedded_guidance) if guidance is None else guidance.reshape(-1).expand(b)
        self._embedded_scale = scale.to(latents.device)
        try:
            return super().forward(latents, t, text, guidance if self.guidance_proj is not None else None)
        finally:
            self._embedded_scale = None

    def denoise(self, latents: Tensor, model_t: Tensor, text: TextCond) -> Tensor:
        """Velocity ``[B, C, T, H, W]`` for latents ``[B, C, T, H, W]`` at ``model_t = 1000 * sigma`` ``[B]``, at the
        embedded guidance scale :meth:`forward` set (else :attr:`embedded_guidance`)."""
        dtype, dev = self.denoiser.dtype, latents.device
        scale = self._embedded_scale
        if scale is None:
            scale = torch.full((latents.shape[0],), self.embedded_guidance, device=dev)
        out = self.denoiser(
            hidden_states=latents.to(dtype),
            timestep=model_t,
            encoder_hidden_states=text["states"].to(dev, dtype),
            encoder_attention_mask=text["mask"].to(dev),
            pooled_projections=text["pooled"].to(dev, dtype),
            # the pipeline: torch.tensor([guidance_scale] * B, dtype=transformer_dtype) * 1000.0
            guidance=scale.to(dev, dtype) * 1000.0 if self.embeds_guidance else None,
            return_dict=False,
        )[0]
        return out.to(latents.dtype)

    def time_embedding(self) -> tuple[nn.Module, int]:
        # the timestep MLP's output is summed with the guidance and pooled-text embeddings into temb [B, inner_dim],
        # which drives every block's modulation and the output norm
        module = self.denoiser.time_text_embed.timestep_embedder
        return module, module.linear_2.out_features

    def feature_blocks(self) -> list[nn.Module]:
        return [*self.denoiser.transformer_blocks, *self.denoiser.single_transformer_blocks]

    def feature_channels(self) -> list[int]:
        cfg = self.denoiser.config
        return [cfg.num_attention_heads * cfg.attention_head_dim] * len(self.feature_blocks())

    def feature_frames(self, output: Tensor | tuple, latents: Tensor) -> Tensor:
        """Video tokens ``[B, T' * h * w, D]`` (both block kinds return them first, the text tokens second; patches
        in (frame, row, column) order, as the patch embedding flattens them) -> ``[B, T', D, h, w]``."""
        out = output[0] if isinstance(output, (tuple, list)) else output
        cfg = self.denoiser.config
        b, _, t, h, w = latents.shape
        grid = (t // cfg.patch_size_t, h // cfg.patch_size, w // cfg.patch_size)
        return out.reshape(b, *grid, out.shape[-1]).permute(0, 1, 4, 2, 3)

    # -- text ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextCond:
        """``{"states": [B, L, D], "mask": [B, L] (int64), "pooled": [B, P]}`` with ``L = max_text_length``: the
        Llama states and mask of the templated prompts past the template's crop, and CLIP's pooled output
        (``HunyuanVideoPipeline.encode_prompt``)."""
        template = prompt_template()
        crop = template["crop_start"]
        tokens = self.tokenizer(
            [template["template"].format(p) for p in prompts], max_length=self.max_text_length + crop,
            padding="max_length", truncation=True, return_attention_mask=True, return_tensors="pt",
        )
        device = execution_device(self.text_encoder)
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        states = hidden[-(LLAMA_LAYERS_TO_SKIP + 1)][:, crop:]
        clip_ids = self.tokenizer_2(prompts, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                                    return_tensors="pt").input_ids
        pooled = self.text_encoder_2(clip_ids.to(execution_device(self.text_encoder_2))).pooler_output
        return {"states": states, "mask": mask[:, crop:].long(), "pooled": pooled.to(device)}

    # -- pixels <-> latents --------------------------------------------------------------------------------
    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + self.vae.config.temporal_compression_ratio * (latent_frames - 1)

    # decode_frames keeps the base class's whole decode: unlike Wan's, this VAE's decode of a prefix of the latents
    # differs from the same frames of the whole decode (measured: up to 0.23 in [0, 1] pixels, tests/speed), so no
    # frame subset is exact here

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        ft, fs = self.vae.config.temporal_compression_ratio, self.vae.config.spatial_compression_ratio
        px = fs * self.denoiser.config.patch_size
        if num_frames % ft != 1:
            raise UserError(f"HunyuanVideo videos have 1 + {ft}k frames (e.g. 129), got {num_frames}")
        if height % px or width % px:
            raise UserError(f"HunyuanVideo video size must be a multiple of {px} pixels, got {height} x {width}")
        return self.vae.config.latent_channels, (num_frames - 1) // ft + 1, height // fs, width // fs

    @torch.no_grad()
    def encode_video(self, videos: Tensor) -> Tensor:
        """Pixels ``[B, T, 3, H, W]`` in [0, 1] (``T = 1 + 4k``) -> scaled latents ``[B, C, 1 + k, H/8, W/8]``
        (posterior mean times ``scaling_factor``)."""
        x = videos.transpose(1, 2).to(self.vae.device, self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents ``[B, C, 1 + k, h, w]`` -> pixels ``[B, 1 + 4k, 3, 8h, 8w]`` in [0, 1] (differentiable)."""
        z = latents.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor
        video = self.vae.decode(z, return_dict=False)[0]
        return (video.float() / 2 + 0.5).clamp(0, 1).transpose(1, 2)
