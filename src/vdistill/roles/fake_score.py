"""DMD2's fake score network (Yin et al. 2024, arXiv 2405.14867; ``fake_unet`` in the official ``sd_guidance.py``):
a trainable copy of the teacher's denoiser that tracks the score of the STUDENT's output distribution.

Named "fake score" (not "critic") so that it is not confused with the reward critics of :mod:`vdistill.critics`.
It starts as the teacher (DMD2 initialises ``fake_unet`` from the real one), as a full copy of the denoiser or with
LoRA adapters on a frozen copy (MagicDistillation's memory saving; the same peft injection as a LoRA student,
:func:`~vdistill.backbones.student.make_student`), and is trained with the teacher's own denoising loss on the
student's samples. DMD2's optional GAN classifier (``cls_pred_branch`` on the fake unet's bottleneck) is a
:class:`~vdistill.roles.discriminator.DiscriminatorHead` on one of the network's
:meth:`~vdistill.backbones.base.Backbone.feature_blocks`.

The text encoder and VAE are shared with the teacher (frozen, never saved twice); the distillation module saves the
trainable parameters only (the LoRA adapters of a LoRA fake score: its base weights are the teacher's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vdistill.backbones.base import Backbone, TextCond
from vdistill.backbones.student import make_student
from vdistill.errors import UserError
from vdistill.roles.discriminator import DiscriminatorHead


@dataclass
class FakeScoreConfig:
    """How the fake score network is made and optimised (``fake_score:`` of ``DistributionMatching``).

    Args:
        mode: ``full`` (a trainable copy of the teacher's denoiser, DMD2) or ``lora`` (adapters on a frozen copy).
        lora_rank, lora_alpha, target_modules: the LoRA settings, as the student's (:class:`StudentConfig`).
        lr: AdamW learning rate of its parameter group (None: the student's ``lr``; DMD2 uses the same for both).
        betas: AdamW betas of its group (None: the module's ``betas``).
        weight_decay: AdamW weight decay of its group (None: the module's ``weight_decay``; DMD2 0.01 for both).
        gradient_checkpointing: recompute its block activations in the backward pass.
        checkpoint_every: with ``gradient_checkpointing``, only every k-th block (as the student's
            :class:`~vdistill.backbones.student.StudentConfig`).
    """

    mode: str = "full"
    lora_rank: int = 64
    lora_alpha: float | None = None
    target_modules: list[str] | str | None = None
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1


class FakeScore(nn.Module):
    """The fake score network ``net`` (a :class:`Backbone` made from the teacher) and, with ``gan_block`` set, the
    GAN classification head on the output of ``net.feature_blocks()[gan_block]``.

    Args:
        teacher: the frozen teacher it starts from (its frozen parts are shared, not copied).
        config: full copy or LoRA (see :class:`FakeScoreConfig`).
        gan_block: index into ``net.feature_blocks()`` (negative counts from the end) read by the head; None: no head.
        gan_hidden: channels of the head.
    """

    def __init__(self, teacher: Backbone, config: FakeScoreConfig, gan_block: int | None = None,
                 gan_hidden: int = 64) -> None:
        super().__init__()
        self.net = make_student(teacher, config.mode, config.lora_rank, config.lora_alpha, config.target_modules,
                                gradient_checkpointing=config.gradient_checkpointing,
                                checkpoint_every=config.checkpoint_every)
        self.net.key_timesteps = None  # a denoiser at every noise level, not a few-step sampler
        self.head: DiscriminatorHead | None = None
        self.block: int | None = None
        if gan_block is not None:
            n = len(self.net.feature_blocks())
            if not -n <= gan_block < n:
                raise UserError(f"gan_block {gan_block} is outside the teacher's {n} feature blocks (valid "
                                f"{-n}..{n - 1})")
            self.block = gan_block % n
            ref = next(self.net.denoiser.parameters())
            # the teacher's widths: peft's wrappers hide a LoRA copy's layer attributes (e.g. out_channels)
            self.head = DiscriminatorHead(teacher.feature_channels()[self.block], gan_hidden).to(ref.device)

    def forward(self, latents: Tensor, t: Tensor, text: TextCond, guidance: Tensor | None = None) -> Tensor:
        """Raw prediction (the teacher's parameterisation) for latents ``[B, C, T, H, W]`` at times ``t`` ``[B]``."""
        return self.net(latents, t, text, guidance)

    def features(self, latents: Tensor, t: Tensor, text: TextCond, detach_params: bool = False) -> Tensor:
        """The GAN block's output ``[B, T', C, h, w]`` for latents ``[B, C, T, H, W]`` at times ``t`` ``[B]``.

        ``detach_params`` runs the network on detached copies of its trainable parameters
        (``torch.func.functional_call``): the features then carry gradient to ``latents`` only (the generator's
        GAN term must not train the fake score)."""
        captured: list = []
        hook = self.net.feature_blocks()[self.block].register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            if detach_params:
                frozen = {n: p.detach() for n, p in self.net.named_parameters() if p.requires_grad}
                torch.func.functional_call(self.net, frozen, (latents, t, text), strict=False)
            else:
                self.net(latents, t, text)
        finally:
            hook.remove()
        return self.net.feature_frames(captured[0], latents)

    def logits(self, latents: Tensor, t: Tensor, text: TextCond, detach_params: bool = False) -> Tensor:
        """The head's realism logits ``[B]``; ``detach_params``: network and head both read detached parameters."""
        if self.head is None:
            raise UserError("this fake score network has no GAN head (set DistributionMatching's gan_weight > 0)")
        return self.head(self.features(latents, t, text, detach_params), detach_params=detach_params)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> FakeScore:
        super().train(mode)
        self.net.train(mode)  # the backbone keeps its frozen encoders in eval mode
        return self
