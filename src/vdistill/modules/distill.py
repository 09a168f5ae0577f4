"""Few-step distillation: a frozen teacher, a student made from it and any mix of objectives, one optimizer.

The AccVideo recipe is ``objectives: [TrajectoryGuidance, AdversarialAlignment]`` with a ``Discriminator`` on
``TrajectoryData``. Every objective returns named loss terms; their weighted sum is the ONE loss of the step,
optimised by ONE AdamW with a parameter group per trained part (student, discriminator heads). With automatic
optimization and a single backward this runs unchanged under DDP, FSDP and DeepSpeed (which takes one
optimizer only: docs/strategies.md and :mod:`vdistill.objectives.adversarial`); the
fragments in ``experiments/strategies/`` say what each shards. Objectives with networks of their own (DMD's
fake score: :mod:`vdistill.objectives.distribution_matching`) add their parameter group to the same AdamW; with a
two time-scale update rule, the steps that train only those networks leave the student without gradient, so under
DDP use ``ddp_find_unused_parameters_true`` (plain DDP is refused at ``setup``); the AdamW holds every other group
still on those steps (``on_before_optimizer_step`` and :mod:`vdistill.training.optim`: no weight, moment or step
count moves, under DDP, FSDP and DeepSpeed ZeRO alike), and the student's learning-rate schedule counts its own
updates. The consistency EMA target needs whole parameters: it is refused under FSDP and ZeRO-3.

A step whose total loss is not finite (NaN / Inf: corrupt data, a diverging run) stops the fit at once with a
:class:`~vdistill.errors.UserError` naming the global step and the batch's shard files, raised in
``training_step``, before the backward pass and the optimizer step: the weights in memory and the checkpoints
already written stay good, and no export is written (``ExportBackbone`` exports at ``on_train_end``, which a
failed fit never reaches). Under DDP / FSDP / DeepSpeed the ranks agree first (one all-reduce of a flag per step,
``reduce_boolean_decision``), so all of them stop at the same step and none waits in a collective forever.

Resuming (``--ckpt_path last``) repeats the interrupted run exactly: besides what Lightning restores, checkpoints
keep every rank's RNG state and fake queues (:mod:`vdistill.training.resume`), set back at ``on_train_start``, and
the datamodules' loaders resume mid-epoch (:mod:`vdistill.data.resumable`).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from vdistill.backbones.base import Backbone, OnDemand
from vdistill.backbones.diffusers_io import resolve_dtype
from vdistill.backbones.io import backbone_record, load_backbone, teacher_reference
from vdistill.backbones.student import StudentConfig, hold_frozen_in, is_lora, make_student
from vdistill.critics.build import build_critics
from vdistill.data.trajectories import TrajectoryData, TrajectoryDataset, check_teacher
from vdistill.errors import UserError
from vdistill.objectives.base import Models, Objective, check_needs
from vdistill.objectives.reward import check_critic_names
from vdistill.objectives.trajectory import trajectory_errors
from vdistill.roles.discriminator import Discriminator
from vdistill.roles.ema import EMAWeights
from vdistill.training.clipping import ShardedGradientClipping
from vdistill.training.optim import HoldingAdamW
from vdistill.training.resume import apply_rank_state, gather_rank_states, pick_rank_state, rank_state

LR_SCHEDULES = ("constant", "linear", "cosine")
#: frozen parts ``offload`` can hold off the device between their uses
OFFLOAD_PARTS = ("text_encoders", "critics")
#: optimizer groups an objective trains on its own steps (DMD's fake score), while the student is not updated
SIDE_GROUPS = ("fake_score",)


def holds_out_trajectories(datamodule: object) -> bool:
    """Whether ``datamodule`` has a held-out trajectory set (``TrajectoryData(val_root=...)``), known before its
    ``setup`` opens it: the only validation data :meth:`Distillation.held_out_loss` scores."""
    return isinstance(datamodule, TrajectoryData) and datamodule.hparams.val_root is not None


def shards_parameters(strategy: object) -> bool:
    """Whether ``strategy`` keeps only a shard of each parameter outside the forward (FSDP, DeepSpeed ZeRO-3)."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)) or bool(getattr(strategy, "zero_stage_3", False))


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_settings(mode: str | None, backend: str) -> None:
    """A one-line UserError for a torch.compile mode or backend that torch does not know (before anything loads)."""
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise UserError(f"compile_backend {backend!r} is not one of {backends}")
    if mode is not None and mode not in COMPILE_MODES:
        raise UserError(f"compile_mode {mode!r} is not one of {list(COMPILE_MODES)}")
    if mode is not None and backend != "inductor":
        raise UserError(f"compile_mode {mode!r} is an inductor setting; compile_backend is {backend!r}")


def _schedule_lambda(name: str, warmup: int, total: int):
    """diffusers' ``get_scheduler(name)`` learning-rate factor as a function of the optimizer step (warm-up from 0,
    then the decay to 0 at ``total``), taken from a scheduler built on a throwaway optimizer."""
    from diffusers.optimization import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return get_scheduler(name, probe, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]


class Distillation(ShardedGradientClipping, L.LightningModule):
    """Distil a frozen teacher into a few-step student with weighted objectives (AccVideo, T2V-Turbo, ...).

    Args:
        teacher: the frozen teacher: a backbone config, or a name :func:`~vdistill.backbones.io.load_backbone`
            resolves (a shipped model such as ``toy-flow``, an exported folder, a ``.ckpt``).
        objectives: the objectives, each with its weight (e.g. ``TrajectoryGuidance``, ``AdversarialAlignment``).
        student: how the student is made from the teacher (full copy or LoRA, guidance embedding).
        discriminator: the discriminator an adversarial objective needs; its heads are built at ``setup`` once the
            data's key timesteps are known.
        lr: AdamW learning rate of the student (AccVideo: 5e-6 for a 13B full fine-tune).
        disc_lr: AdamW learning rate of the discriminator heads.
        weight_decay: AdamW weight decay of both groups.
        betas: AdamW betas.
        warmup_steps: linear learning-rate warm-up of every group, in that group's updates: the student's and the
            discriminator's count the steps that update the student (with DMD's ``fake_updates: k``, every k-th
            step), a fake score's every step.
        lr_schedule: after the warm-up, ``constant``, or ``linear`` / ``cosine``: a decay to 0 at the run's last
            step (``trainer.max_steps`` or ``max_epochs``; a run stopped earlier by ``max_time`` ends above 0), by
            diffusers' ``get_scheduler`` (whose warm-up starts at 0), counted as ``warmup_steps`` is.
        guidance: embedded guidance scale fed to a student with a guidance embedding (None: none).
        target_ema_decay: the consistency target network (``ConsistencyDistillation``): an EMA of the student's
            trainable weights with this decay (T2V-Turbo's paper: 0.95); None: the online student under no_grad
            (T2V-Turbo's code and v2).
        critics: reward critics by the names reward objectives use: ``{name: {checkpoint: ..., **load_critic
            options, critic: registered name (default: name), grad_checkpointing: bool}}`` or a list of names
            (toy critics: their shipped weights); frozen, in eval mode, never saved in checkpoints (see
            :func:`~vdistill.critics.build.build_critics`).
        frozen_dtype: hold every frozen weight in this dtype (``bfloat16``: half the bytes): the teacher, its text
            encoders, a LoRA student's and a LoRA fake score's base weights, the critics; the trainable weights
            (a full student, adapters, heads) are kept in float32 and the VAE in its configured dtype (``vae_dtype``:
            float32 for Wan). Meant for ``trainer.precision: bf16-mixed``, which autocasts but keeps every parameter
            in float32, frozen ones included. None: every weight as loaded (docs/speed.md).
        compile: ``torch.compile`` the denoisers (student, teacher, a DMD fake score) in place
            (``nn.Module.compile``: parameter names, checkpoints and exports are unchanged). The first steps
            compile (minutes for a large model, one graph per variant: with and without gradient, each batch
            shape); ``ThroughputMemory`` leaves every step that compiled out of its rates.
        compile_mode: torch.compile's ``mode`` (``default``, ``reduce-overhead``, ``max-autotune``,
            ``max-autotune-no-cudagraphs``); None: torch's default. Only with the ``inductor`` backend.
        compile_backend: torch.compile's ``backend`` (``inductor``; ``aot_eager`` traces and runs the same graphs
            without code generation: for debugging, and the CPU tests, where inductor's C++ build takes minutes).
        offload: frozen parts held on ``offload_device`` between their uses (docs/speed.md): ``text_encoders``
            (moved in for each ``encode_text`` call and out right after it: with pixel batches; never used with
            trajectory or latent-cache batches, whose text is encoded), ``critics`` (moved in at a reward's first
            scoring of the step, out after the optimizer step: their backward needs the weights). Each move is a
            host-device copy of the weights; refused under strategies that shard parameters (FSDP, ZeRO-3).
        offload_device: where offloaded parts wait (``cpu``).

    Data: trajectory key points (``TrajectoryData``) or real clips (consistency distillation), as the objectives
    need: ``(videos [B, T, 3, H, W], prompts)`` batches of a video datamodule (``VideoClips``, ``ToyVideos``), or the
    same clips encoded once by ``vdistill preprocess`` (``LatentClips``: the fit then runs neither the VAE encoder
    nor the text encoder). A LoRA student's checkpoints are adapter-only when its teacher can be rebuilt (a name, a
    path, a diffusers folder config).
    """

    def __init__(
        self,
        teacher: Backbone | str,
        objectives: list[Objective],
        student: StudentConfig = StudentConfig(),
        discriminator: Discriminator | None = None,
        lr: float = 5e-6,
        disc_lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        guidance: float | None = None,
        target_ema_decay: float | None = None,
        critics: dict[str, Any] | list[str] | None = None,
        frozen_dtype: str | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        offload: list[str] | None = None,
        offload_device: str = "cpu",
    ) -> None:
        super().__init__()
        # plain values only: checkpoints stay loadable with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["teacher", "objectives", "student", "discriminator", "critics"])
        self.hparams["student"] = asdict(student)
        if lr_schedule not in LR_SCHEDULES:
            raise UserError(f"lr_schedule {lr_schedule!r} is not one of {list(LR_SCHEDULES)}")
        if not objectives:
            raise UserError("model.objectives is empty: name at least one objective (e.g. TrajectoryGuidance)")
        frozen = None if frozen_dtype is None else resolve_dtype(frozen_dtype)
        if compile:
            check_compile_settings(compile_mode, compile_backend)
        bad = sorted(set(offload or ()) - set(OFFLOAD_PARTS))
        if bad:
            raise UserError(f"offload {bad} is not among {list(OFFLOAD_PARTS)}")
        self.teacher = load_backbone(teacher) if isinstance(teacher, str) else teacher
        self.teacher.requires_grad_(False).eval()
        self.objectives = nn.ModuleList(objectives)
        uses_disc = any("discriminator" in o.needs for o in objectives)
        if discriminator is not None and not uses_disc:
            rank_zero_warn("a discriminator is configured but no objective uses it: it is left out")
            discriminator = None
        self.discriminator = discriminator
        self.critics = build_critics(critics)
        # the data's needs ("trajectory", "videos") are checked in setup, when the datamodule is known
        check_needs(objectives, self.models().available() | {"trajectory", "videos"})
        check_critic_names(objectives, self.critics)
        self.student = make_student(self.teacher, **asdict(student))
        for obj in objectives:
            obj.prepare_student(self.student)
            bind = getattr(obj, "bind_teacher", None)  # objectives with networks of their own (DMD's fake score)
            if callable(bind):
                bind(self.teacher)
        if frozen is not None:  # before the EMA target copies the trainable weights (upcast to float32 here)
            vaes = tuple(m for m in (getattr(self.teacher, "vae", None),) if m is not None)
            hold_frozen_in(self, frozen, skip=vaes)
        self.target = None if target_ema_decay is None else EMAWeights(self.student, target_ema_decay)
        self._teacher_ref = teacher_reference(teacher)
        self.key_timesteps: tuple[float, ...] | None = None
        self._resume_state: dict | None = None  # this rank's RNG and fake queues from the checkpoint resumed
        self._student_step = True  # whether the step in progress updates the student (see trains_student)
        # the frozen teacher is rebuilt from the config, not saved: resuming must not ask for its weights
        self.strict_loading = False
        self._on_demand = self._hold_off_device(set(offload or ()), offload_device)
        if compile:  # last: a deep copy of a compiled module would still call the original's compiled forward
            for net in self.denoisers():
                net.compile(backend=compile_backend, **({} if compile_mode is None else {"mode": compile_mode}))

    def _hold_off_device(self, parts: set[str], device: str) -> list[OnDemand]:
        """:class:`~vdistill.backbones.base.OnDemand` holders of the parts to offload (the student shares the
        teacher's text encoders)."""
        holders = []
        if "text_encoders" in parts:
            encoders = [m for name, m in self.teacher.named_children() if name.startswith("text_encoder")]
            holders += [OnDemand(m, device, after_call=True) for m in encoders]
        if "critics" in parts:
            holders += [OnDemand(c, device, after_call=False) for c in self.critics.values()]
        return holders

    def on_fit_start(self) -> None:
        """Offloaded parts leave the device the strategy moved the whole module to (once per fit)."""
        if self._on_demand and shards_parameters(self.trainer.strategy):
            raise UserError(f"offload needs whole modules to move, and {type(self.trainer.strategy).__name__} shards "
                            "them: drop model.offload or use ddp / deepspeed_zero2")
        for holder in self._on_demand:
            holder.compute_device = self.device
            holder.release()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        for holder in self._on_demand:  # after the optimizer step: the critics' backward is done
            holder.release()

    def denoisers(self) -> list[nn.Module]:
        """The denoiser networks a step runs: the student's, the teacher's, and the objectives' own (DMD's fake
        score)."""
        nets = [self.student.denoiser, self.teacher.denoiser]
        nets += [obj.fake_score.net.denoiser for obj in self.objectives if getattr(obj, "fake_score", None) is not None]
        return nets

    def models(self) -> Models:
        """A fresh per-step bundle of the models (its cache shares the student's predictions between objectives)."""
        return Models(student=getattr(self, "student", None), teacher=self.teacher,
                      discriminator=self.discriminator, guidance=self.hparams.guidance,
                      target=getattr(self, "target", None), critics=dict(getattr(self, "critics", {})) or None)

    # -- wiring to the data ------------------------------------------------------------------------------
    def bind_key_timesteps(self, timesteps: list[float]) -> None:
        """Adopt the data's key timesteps ``t_0 .. t_m`` (noisiest first): the student samples along them and the
        discriminator gets one head per ``t_1 .. t_m``."""
        times = tuple(float(t) for t in timesteps)
        if len(times) < 2:
            raise UserError(f"distillation needs at least 2 key points per trajectory, the data has {len(times)}")
        if self.key_timesteps is not None and times != self.key_timesteps:
            raise UserError(f"this run was built for key timesteps {list(self.key_timesteps)}, "
                            f"the data has {list(times)}")
        self.key_timesteps = times
        self.student.set_key_timesteps(times)
        if self.discriminator is not None:
            self.discriminator.bind(self.teacher, times[1:])

    def check_data(self, datamodule: L.LightningDataModule | None) -> None:
        """Refuse data that lacks what an objective needs (``trajectory``, ``videos``: the datamodule's
        ``provides``), and data encoded for another teacher (a datamodule's ``check_teacher(teacher)``, e.g.
        ``LatentClips``: a ``vdistill preprocess`` cache); the CLI calls it right after parsing, ``setup`` again."""
        provides = set(getattr(datamodule, "provides", ()))
        if isinstance(getattr(datamodule, "dataset", None), TrajectoryDataset):
            provides.add("trajectory")
        what = type(datamodule).__name__ if datamodule is not None else "not a datamodule"
        check_needs(self.objectives, self.models().available() | provides, where=f"(the data is {what})")
        check_teacher = getattr(datamodule, "check_teacher", None)
        if callable(check_teacher):
            check_teacher(self.teacher)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        self.check_data(dm)
        if self.target is not None and shards_parameters(self.trainer.strategy):
            raise UserError(f"the EMA target (target_ema_decay) needs whole parameters, and "
                            f"{type(self.trainer.strategy).__name__} shards them: use ddp or deepspeed_zero2, or the "
                            "online target (target_ema_decay: null, T2V-Turbo's code)")
        for obj in self.objectives:  # e.g. DMD's GAN term, whose detached-parameter pass FSDP cannot run
            check = getattr(obj, "check_strategy", None)
            if callable(check) and self._trainer is not None:
                check(type(self.trainer.strategy).__name__, shards_parameters(self.trainer.strategy))
        if self._trainer is not None:
            self._check_side_steps(self.trainer.strategy)
        dataset = getattr(dm, "dataset", None)
        if isinstance(dataset, TrajectoryDataset):  # its held-out set was checked against it (check_held_out)
            check_teacher(dataset.manifest, self.teacher, dataset.root)
            self._bind_data_grid(dataset.timesteps.tolist())

    def _own_grid(self) -> tuple[float, ...] | None:
        """The student's key timesteps fixed by an objective (DMD's ``steps``: the schedule's own m-step grid), or
        None when the data sets them."""
        if any(getattr(obj, "steps", None) is not None for obj in self.objectives):
            return tuple(self.student.key_timesteps)
        return None

    def _bind_data_grid(self, timesteps: list[float]) -> None:
        """Adopt a trajectory set's key timesteps, unless an objective fixed the student's own grid (DMD's ``steps``)
        and nothing reads the key points (no trajectory objective, no discriminator): then the set gives prompts and
        real samples only, and the student keeps its grid (a 1- or 4-step student from a 2-step set)."""
        own = self._own_grid()
        needs_points = self.discriminator is not None or any("trajectory" in o.needs for o in self.objectives)
        if own is None or needs_points:
            if own is not None and tuple(float(t) for t in timesteps) != own:
                ours, data = [round(t, 4) for t in own], [round(float(t), 4) for t in timesteps]
                raise UserError(f"an objective's steps give the student the key timesteps {ours}, but the trajectory "
                                f"set's are {data} and trajectory objectives read them: drop the steps or synthesise "
                                "a set on that grid")
            self.bind_key_timesteps(timesteps)
        else:
            self.key_timesteps = own

    def _check_side_steps(self, strategy: object) -> None:
        """Refuse DDP without ``find_unused_parameters`` when some steps leave the student without gradient (DMD's
        fake-score-only steps): DDP would wait for the student's gradients at the next step and stop with
        "Expected to have finished reduction in the prior iteration"."""
        from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

        if (isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy)
                and not strategy._ddp_kwargs.get("find_unused_parameters", False)):
            side = [o for o in self.objectives if getattr(o, "fake_updates", 1) > 1]
            if side:
                raise UserError(f"{type(side[0]).__name__}(fake_updates={side[0].fake_updates}) leaves the student "
                                "without gradient on its fake-score-only steps, which DDP refuses unless it looks "
                                "for unused parameters: use strategy ddp_find_unused_parameters_true, or "
                                "fake_updates: 1")

    # -- training --------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distillation:
        super().train(mode)
        self.teacher.eval()  # frozen: never dropout / train-mode norms, whatever Lightning switches
        return self

    def training_step(self, batch: dict | tuple, batch_idx: int) -> Tensor:
        if isinstance(batch, (tuple, list)):  # a video datamodule's (videos [B, T, 3, H, W], prompts)
            batch = {"videos": batch[0], "prompts": list(batch[1])}
        models = self.models()
        total: Tensor | float = 0.0
        logs: dict[str, Tensor] = {}
        self._student_step = self.trains_student(self.global_step)
        for obj in self.objectives:
            if self._student_step:
                out = obj(batch, models)
            elif callable(getattr(obj, "side_losses", None)):
                out = obj.side_losses(batch, models)  # e.g. DMD's fake score alone (two time-scale updates)
            else:
                continue
            total = total + obj.total(out)
            for key, value in out.items():
                logs[f"loss/{key}" if key in obj.loss_terms else f"{obj.name}/{key}"] = value.detach()
        logs["loss/total"] = total.detach()
        self._stop_unless_finite(logs, batch)
        bs = len(batch["prompts"]) if "prompts" in batch else batch["latents"].shape[0]
        self.log_dict(logs, batch_size=bs)
        self.log("loss", total.detach(), prog_bar=True, logger=False, batch_size=bs)
        return total

    def trains_student(self, step: int) -> bool:
        """Whether global step ``step`` updates the student: every step, unless an objective's two time-scale
        update rule (DMD2's ``fake_updates``) keeps it for its own networks alone."""
        return all(obj.trains_student(step) for obj in self.objectives
                   if callable(getattr(obj, "trains_student", None)))

    def on_before_optimizer_step(self, optimizer) -> None:
        """Mark which optimizer groups this step holds still: on a step that does not update the student, every
        group but the side networks' (:class:`~vdistill.training.optim.HoldingAdamW` then skips them, moments, step
        count and weight decay included), so the student and the discriminator heads come out of the step
        bit-identical, whatever a strategy wrote into their gradients (DDP with ``find_unused_parameters`` reduces
        zeros, DeepSpeed ZeRO steps a flat partition with zeros where a parameter had no gradient). Lightning
        passes DeepSpeed's ZeRO optimizer here, whose groups are the wrapped AdamW's."""
        for group in optimizer.param_groups:
            group["hold"] = not self._student_step and group.get("name") not in SIDE_GROUPS

    def _stop_unless_finite(self, logs: dict[str, Tensor], batch: dict) -> None:
        """Raise a one-line UserError, on every rank at once, when this step's total loss is not finite on any rank
        (called before backward: nothing of the step reaches the weights)."""
        finite = bool(torch.isfinite(logs["loss/total"]).all())
        attached = self._trainer is not None
        if attached:  # a collective: every rank calls it every step, so no rank is left waiting
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        step = f"global step {self.trainer.global_step}" if attached else "this step"
        bad = ", ".join(f"{k}={v.item():g}" for k, v in logs.items() if v.numel() == 1 and not v.isfinite())
        files = list(dict.fromkeys(batch.get("shard", ())))  # TrajectoryData batches name their shards
        where = f"the batch from {', '.join(map(repr, files))}" if files else "the batch"
        what = f"the loss is not finite ({bad}) on {where}" if bad else "the loss of another rank is not finite"
        raise UserError(f"{what} at {step}: training stopped before this step's update, so the weights and the last "
                        "checkpoint are the last good ones and nothing is exported; check the data "
                        "(vdistill.synth.verify) or lower the learning rate")

    @property
    def validation_step(self):
        """Lightning's validation hook: :meth:`held_out_loss` when the datamodule holds out trajectories, else None.

        Lightning reads None as "no validation_step" (``is_overridden``, checked before ``setup`` and again before
        each validation): a fit without a held-out set runs no validation loop and does not warn about a missing
        ``val_dataloader``, and a video datamodule's validation clips (``ToyVideos``), which this loss cannot score,
        are not iterated; ``trainer.validate`` needs ``TrajectoryData(val_root=...)``.
        """
        trainer = self._trainer
        return self.held_out_loss if trainer is not None and holds_out_trajectories(trainer.datamodule) else None

    def held_out_loss(self, batch: dict, batch_idx: int) -> None:
        """The student's trajectory loss (Eq. 6) on held-out key points (``TrajectoryData(val_root=...)``):
        ``val/trajectory`` and ``val/k{i}`` per pair, whatever the objectives (no queue or state is touched)."""
        out = trajectory_errors(batch, self.models())
        self.log_dict({f"val/{k}": v.detach() for k, v in out.items()}, batch_size=batch["latents"].shape[0],
                      sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "lr": hp.lr,
                   "name": "student"}]
        if self.discriminator is not None:
            groups.append({"params": list(self.discriminator.parameters()), "lr": hp.disc_lr,
                           "name": "discriminator"})
        for obj in self.objectives:  # networks an objective trains itself (DMD's fake score), with its settings
            if callable(getattr(obj, "param_groups", None)):
                groups.extend(obj.param_groups(hp.lr, tuple(hp.betas), hp.weight_decay))
        # a two time-scale rule updates the student every k-th step only: on the others its groups are held still
        # (on_before_optimizer_step); without one, torch's AdamW itself (the type DeepSpeed ZeRO lists as tested)
        k = max((int(getattr(obj, "fake_updates", 1)) for obj in self.objectives), default=1)
        adamw = HoldingAdamW if k > 1 else torch.optim.AdamW
        opt = adamw(groups, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        schedule = hp.lr_schedule
        if schedule == "constant" and hp.warmup_steps <= 0:
            return opt
        # the student's groups count the steps that update the student (warm-up and decay then span its own
        # updates), a side network's group every step
        if schedule == "constant":
            warm = hp.warmup_steps
            side_fn = lambda step: min(1.0, (step + 1) / warm)  # noqa: E731
            student_fn = side_fn
        else:
            total = self.trainer.estimated_stepping_batches  # optimizer steps of the whole run
            if not math.isfinite(total):
                raise UserError(f"lr_schedule {schedule!r} decays to 0 at the run's last step: set "
                                "trainer.max_steps (e.g. --trainer.max_steps 3000) or max_epochs")
            side_fn = _schedule_lambda(schedule, hp.warmup_steps, int(total))
            student_fn = _schedule_lambda(schedule, hp.warmup_steps, math.ceil(int(total) / k))
        lambdas = [side_fn if g.get("name") in SIDE_GROUPS else (lambda step: student_fn(step // k))
                   for g in groups]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.target is not None and self._student_step:  # the EMA target follows the student once per optimizer step
            self.target.update(self.student)

    def on_train_start(self) -> None:
        # a resumed run: this rank's RNG and fake queues as they were at the checkpoint, set after every other
        # start-up step that may draw random numbers (an uninterrupted run drew them before its first step)
        if self._resume_state is not None:
            apply_rank_state(self, self._resume_state)
            self._resume_state = None

    # -- checkpoints -----------------------------------------------------------------------------------
    def _unsaved_prefixes(self) -> tuple[str, ...]:
        """The frozen teacher and critics, and the student's frozen parts that its constructor reloads from its own
        path."""
        return ("teacher.", "critics.", *(f"student.{p}" for p in self.student.rebuilt_prefixes))

    def _adapter_only(self) -> bool:
        return self._teacher_ref is not None and is_lora(self.student)

    def _side_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the objectives' own networks (DMD's fake score), rebuilt from the teacher: only
        their trainable parameters are saved (a LoRA fake score's adapters, a full one's denoiser and head)."""
        return tuple(f"objectives.{i}.fake_score." for i, obj in enumerate(self.objectives)
                     if getattr(obj, "fake_score", None) is not None)

    def _saved(self, keys) -> list[str]:
        """The keys a checkpoint keeps: not the unsaved prefixes, for an adapter-only LoRA checkpoint no student
        weight but the trainable ones (the frozen base weights are the teacher's), and of the objectives' own
        networks only the trainable weights."""
        drop, side = self._unsaved_prefixes(), self._side_prefixes()
        trained = {n.replace("_fsdp_wrapped_module.", "")  # FSDP's state dict has clean names
                   for n, p in self.named_parameters() if p.requires_grad}
        adapter_only = self._adapter_only()
        return [k for k in keys if not k.startswith(drop)
                and not (adapter_only and k.startswith("student.") and k not in trained)
                and not (side and k.startswith(side) and k not in trained)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vdistill_backbone"] = backbone_record(self.student)
        checkpoint["vdistill_key_timesteps"] = None if self.key_timesteps is None else list(self.key_timesteps)
        if self._adapter_only():
            checkpoint["vdistill_teacher"] = self._teacher_ref
        if "state_dict" in checkpoint:  # DeepSpeed writes the module's weights itself
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: state[k] for k in self._saved(state)}
        if self._trainer is not None:  # every rank's RNG and fake queues (a collective: all ranks save)
            checkpoint["vdistill_rank_states"] = gather_rank_states(rank_state(self))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        times = checkpoint.get("vdistill_key_timesteps")
        if times is not None and self.key_timesteps is None:  # load_from_checkpoint: no data to read them from
            self.bind_key_timesteps(times)
        if self._trainer is not None:
            self._resume_state = pick_rank_state(checkpoint.get("vdistill_rank_states"), self.trainer.global_rank,
                                                 self.trainer.world_size)
        if "state_dict" not in checkpoint:  # DeepSpeed loads the module's weights itself
            return
        missing = sorted(k for k in self._saved(self.state_dict()) if k not in checkpoint["state_dict"])
        if missing:
            raise UserError(f"the checkpoint does not match this distillation run: missing {missing[:8]}"
                            f"{' ...' if len(missing) > 8 else ''} ({len(missing)} keys)")
