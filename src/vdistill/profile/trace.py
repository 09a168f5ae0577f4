"""One training step and one sampled video of a recipe, traced on the meta device (nothing is allocated).

The step is the recipe's own: its objectives are built from the recipe and called as the distillation module calls
them (``obj(batch, models)``, summed with ``obj.total``, ONE backward), on a batch of the recipe's shapes, under a
:class:`~vdistill.profile.counter.StepCounter` (FLOPs by part, live activation bytes). The activations without
gradient checkpointing are estimated from one block of each checkpointed backbone (:class:`BlockPasses`) rather than
traced again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from vdistill.backbones.base import Backbone
from vdistill.errors import UserError
from vdistill.profile.counter import OTHER, StepCounter, count_flops
from vdistill.profile.models import kept_on_meta, meta_backbone
from vdistill.profile.recipe import Recipe

#: AccVideo's key points (0, 10, ..., 50 of the teacher's 50 steps) when the recipe's trajectory set is not on disk
DEFAULT_KEY_POINTS = 6
PRECISION_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


@dataclass
class Shape:
    """The step's sizes: ``batch`` samples of ``frames x height x width`` pixels; ``key_indices`` of the teacher's
    ``steps``-step grid (trajectory data)."""

    batch: int
    frames: int
    height: int
    width: int
    key_indices: tuple[int, ...] = ()
    steps: int = 50


@dataclass
class Setup:
    """The recipe's models built at real size on the meta device, and its batch."""

    recipe: Recipe
    teacher: Backbone
    student: Backbone
    objectives: list[nn.Module]
    discriminator: nn.Module | None
    critics: nn.ModuleDict
    shape: Shape
    data_kind: str  # trajectory, videos, latents
    guidance: float | None = None
    notes: list[str] = field(default_factory=list)
    device: str = "meta"

    def parts(self) -> dict[str, list[nn.Module]]:
        """The modules whose FLOPs are reported apart, by part name (disjoint: nested modules count once)."""
        t = self.teacher
        fake = [o.fake_score for o in self.objectives if getattr(o, "fake_score", None) is not None]
        return {
            "teacher": [t.denoiser],
            "student": [self.student.denoiser, *([self.student.guidance_proj] if self.student.guidance_proj else [])],
            "fake score": fake,
            "discriminator": list(self.discriminator.heads) if self.discriminator is not None else [],
            "critics": list(self.critics.values()),
            # the VAE's parts, not the VAE: diffusers calls encode / decode as methods, which run no module hooks
            "vae": list(t.vae.children()) if getattr(t, "vae", None) is not None else [],
            "text encoder": [m for m in (getattr(t, "text_encoder", None), getattr(t, "text_encoder_2", None)) if m],
        }


def import_component(name: str) -> type:
    from vdistill.registry import COMPONENTS

    if name not in COMPONENTS:
        raise UserError(f"unknown component {name!r} in the recipe; registered: {', '.join(sorted(COMPONENTS))}")
    return getattr(importlib.import_module(COMPONENTS[name][1]), name)


def instantiate(cls: type, args: dict) -> Any:
    """``cls(**args)`` with nested mappings turned into the dataclasses the signature defaults to (what jsonargparse
    does for e.g. ``fake_score: {mode: full}``)."""
    params = inspect.signature(cls).parameters
    for key, value in list(args.items()):
        default = params[key].default if key in params else None
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            args[key] = type(default)(**value)
    return cls(**args)


def data_shape(recipe: Recipe, teacher: Backbone, opts: dict) -> tuple[str, Shape]:
    """What kind of batch the recipe's data gives and its sizes: the trajectory set's manifest when it is on disk,
    else the command-line sizes, else the teacher's sampling defaults."""
    name, args = recipe.data
    d = teacher.defaults
    batch = int(opts.get("batch") or args.get("batch_size", 1))
    size = {"frames": opts.get("frames"), "height": opts.get("height"), "width": opts.get("width")}
    if name == "TrajectoryData":
        keys, steps = opts.get("key_indices"), d.steps
        manifest = _manifest(args.get("root"))
        if manifest is not None:
            s = manifest["settings"]
            keys = keys or tuple(args.get("key_indices") or s["key_indices"])
            steps = int(s.get("steps", steps))
            for k in ("frames", "height", "width"):
                size[k] = size[k] or s.get(k if k != "frames" else "num_frames")
        if not keys:
            keys = tuple(round(i * steps / (DEFAULT_KEY_POINTS - 1)) for i in range(DEFAULT_KEY_POINTS))
        return "trajectory", Shape(batch, size["frames"] or d.num_frames, size["height"] or d.height,
                                   size["width"] or d.width, tuple(keys), steps)
    if name in ("VideoClips", "ToyVideos", "LatentClips"):
        side = args.get("size")
        frames = size["frames"] or args.get("num_frames", d.num_frames)
        height = size["height"] or args.get("height", side or d.height)
        width = size["width"] or args.get("width", side or d.width)
        return ("latents" if name == "LatentClips" else "videos"), Shape(batch, frames, height, width)
    raise UserError(f"data class {name!r} is not one vdistill profile reads; valid choices: TrajectoryData, "
                    "VideoClips, LatentClips, ToyVideos")


def _manifest(root: Any) -> dict | None:
    """The trajectory set's manifest (its ``settings``: sizes, steps, key indices), read as JSON: the synth package
    imports Lightning, which a profile does not need."""
    import json
    from pathlib import Path

    found = sorted(Path(str(root)).glob("manifest*.json")) if root else []
    if not found:
        return None
    return json.loads(found[0].read_text(encoding="utf-8"))


def build(recipe: Recipe, opts: dict, device: str = "meta") -> Setup:
    """The recipe's teacher, student, objectives, discriminator and critics on the meta device (or on ``device``
    with random weights)."""
    from vdistill.backbones.student import make_student
    from vdistill.diffusion.schedules import timesteps_at

    teacher = meta_backbone(recipe.teacher, opts.get("teacher_config"), device)
    kind, shape = data_shape(recipe, teacher, opts)
    student_cfg = dict(recipe.student)
    notes: list[str] = []
    with torch.device(device):
        student = make_student(teacher, **student_cfg)
        objectives = [instantiate(import_component(n), dict(a)) for n, a in recipe.objectives]
        for obj in objectives:
            obj.prepare_student(student)
            if callable(getattr(obj, "bind_teacher", None)):
                obj.bind_teacher(teacher)
        disc = None
        if recipe.discriminator is not None and any("discriminator" in o.needs for o in objectives):
            disc = instantiate(import_component(recipe.discriminator[0]), dict(recipe.discriminator[1]))
        critics = nn.ModuleDict()
        if recipe.critics:
            from vdistill.critics.build import build_critics  # imports Lightning (rank_zero_warn)

            with kept_on_meta() if device == "meta" else contextlib.nullcontext(), quiet_random_critics():
                critics = build_critics(_critic_specs(recipe.critics))
    frozen_dtype = recipe.model_args.get("frozen_dtype")
    if frozen_dtype is not None:  # as Distillation: frozen weights in that dtype, trainable ones in float32
        from vdistill.backbones.diffusers_io import resolve_dtype
        from vdistill.backbones.student import hold_frozen_in

        vae = getattr(teacher, "vae", None)
        hold_frozen_in(nn.ModuleList([teacher, student, *objectives, critics]), resolve_dtype(frozen_dtype),
                       skip=() if vae is None else (vae,))
    own_grid = any(getattr(o, "steps", None) is not None for o in objectives)  # DMD's `steps`: its own grid
    reads_points = disc is not None or any("trajectory" in o.needs for o in objectives)
    if kind == "trajectory" and (reads_points or not own_grid):  # as Distillation._bind_data_grid
        grid = teacher.schedule.sampling_timesteps(shape.steps)
        times = timesteps_at(grid, list(shape.key_indices)).tolist()
        student.set_key_timesteps(times)
        if disc is not None:
            with torch.device(device):
                disc.bind(teacher, times[1:])
    return Setup(recipe, teacher, student, objectives, disc, critics, shape, kind,
                 recipe.model_args.get("guidance"), notes, device)


@contextlib.contextmanager
def quiet_random_critics():
    """Silence the "no checkpoint: random weights" warnings of critics built without weights on purpose."""
    import logging
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns through the root logger
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no checkpoint: random weights")
            yield
    finally:
        root.setLevel(level)


def _critic_specs(specs: Any) -> dict:
    """The recipe's critics with random weights (``checkpoint: None``): the sizes are the registered ones. A
    tokenizer folder is replaced by a five-token BERT tokenizer: the critics pad every prompt to their full length,
    so the text tower's cost is the same."""
    if not isinstance(specs, dict):
        specs = {str(n): {} for n in specs}
    out = {}
    for name, spec in specs.items():
        opts = {} if spec is None else {"checkpoint": spec} if isinstance(spec, str) else dict(spec)
        opts["checkpoint"] = None
        if "tokenizer" in opts:
            opts["tokenizer"] = _five_token_bert_tokenizer()
        out[name] = opts
    return out


def _five_token_bert_tokenizer():
    import tempfile
    from pathlib import Path

    from transformers import BertTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
        return BertTokenizer(str(vocab))


def make_batch(setup: Setup) -> dict:
    """A batch of the recipe's shapes (zeros) on the setup's device."""
    t, s = setup.teacher, setup.shape
    c, lt, lh, lw = t.latent_shape(s.frames, s.height, s.width)
    prompts = [""] * s.batch
    if setup.data_kind == "videos":
        return {"videos": torch.zeros(s.batch, s.frames, 3, s.height, s.width, device=setup.device), "prompts": prompts}
    text = t.encode_text(prompts)
    if setup.data_kind == "latents":
        return {"latents": torch.zeros(s.batch, c, lt, lh, lw, device=setup.device), "text": text,
                "uncond": t.encode_text([""]), "prompts": prompts}
    k = len(s.key_indices)  # the set's key points (a DMD student with its own grid reads only their prompts)
    from vdistill.diffusion.schedules import timesteps_at

    grid = timesteps_at(t.schedule.sampling_timesteps(s.steps), list(s.key_indices))
    times = grid.to(setup.device).expand(s.batch, k)
    return {"latents": torch.zeros(s.batch, k, c, lt, lh, lw, device=setup.device), "timesteps": times, "text": text,
            "prompts": prompts}


def backbones(setup: Setup) -> list[Backbone]:
    """Teacher, student and any objective's own backbone (a fake score), each once."""
    found = [setup.teacher, setup.student, *(getattr(o, "fake_score", None) for o in setup.objectives)]
    return list({id(b): b for b in found if isinstance(b, Backbone)}.values())


def checkpointing(backbone: Backbone) -> bool:
    """Whether the backbone's denoiser recomputes its blocks in the backward (diffusers' flag or our wrapper)."""
    if getattr(backbone.denoiser, "gradient_checkpointing", False):
        return True
    try:
        return any("forward" in b.__dict__ for b in backbone.feature_blocks())
    except UserError:
        return False


class BlockPasses:
    """The forward passes WITH gradients of every checkpointed block (not the backward's recomputes): the bytes of
    each pass's input, and one pass's arguments per backbone to measure what a block keeps."""

    def __init__(self, setup: Setup) -> None:
        self.inputs: dict[int, int] = {}  # backbone index -> bytes of its blocks' inputs, summed over passes
        self.sample: dict[int, tuple] = {}  # backbone index -> (block, args, kwargs) of its first pass
        self.owners = [b for b in backbones(setup) if checkpointing(b)]
        self.handles = [block.register_forward_hook(self._hook(i, block), with_kwargs=True)
                        for i, b in enumerate(self.owners) for block in b.feature_blocks()]

    def _hook(self, i: int, block: nn.Module):
        def hook(_module, args, kwargs, output) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if torch._C._current_graph_task_id() != -1 or not torch.is_grad_enabled() or not out.requires_grad:
                return
            x = _block_input(args, kwargs)[1]
            self.inputs[i] = self.inputs.get(i, 0) + x.numel() * x.element_size()
            self.sample.setdefault(i, (block, args, kwargs))

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def extra_without_checkpointing(self) -> int:
        """Bytes more that the step would keep without checkpointing: for each backbone, what one block keeps
        beyond a checkpointed one per byte of its input (measured on its first pass), times its passes' inputs."""
        extra = 0
        for i, (block, args, kwargs) in self.sample.items():
            plain, ckpt = (_kept_by_block(block, args, kwargs, c) for c in (False, True))
            x = _block_input(args, kwargs)[1]
            extra += round((plain - ckpt) / (x.numel() * x.element_size()) * self.inputs[i])
        return extra


def _block_input(args: tuple, kwargs: dict) -> tuple[int | str, Tensor]:
    """Where a block's input is (position or keyword: the first tensor, ``hidden_states`` when passed by name)."""
    if args and isinstance(args[0], Tensor):
        return 0, args[0]
    if isinstance(kwargs.get("hidden_states"), Tensor):
        return "hidden_states", kwargs["hidden_states"]
    return next((i, a) for i, a in enumerate(args) if isinstance(a, Tensor))


def _kept_by_block(block: nn.Module, args: tuple, kwargs: dict, checkpointed: bool) -> int:
    """Bytes one forward of ``block`` keeps for the backward (its outputs not counted), plain or checkpointed."""
    from torch.utils.checkpoint import checkpoint

    where, x = _block_input(args, kwargs)
    x = x.detach().requires_grad_(True)
    if isinstance(where, int):
        args = (*args[:where], x, *args[where + 1:])
    else:
        kwargs = {**kwargs, where: x}
    counter = StepCounter(exclude=[*block.parameters(), *block.buffers()])
    forward = type(block).forward
    with counter:
        if checkpointed:
            out = checkpoint(forward, block, *args, use_reentrant=False, **kwargs)
        else:
            out = forward(block, *args, **kwargs)
        kept = counter.live
    outs = {counter._key(t): t.untyped_storage().nbytes() for t in tree_flatten(out)[0] if isinstance(t, Tensor)}
    return kept - sum(outs.values())


@dataclass
class StepTrace:
    """FLOPs of one step by part, forward and backward, and the activation bytes at the step's peak, with the
    recipe's checkpointing and (estimated, None when nothing is checkpointed) without it."""

    forward: dict[str, int]
    backward: dict[str, int]
    activations: int
    activations_no_checkpointing: int | None = None


def trace_step(setup: Setup, student_step: bool = True) -> StepTrace:
    """One training step (forward of every objective, ONE backward), as the distillation module runs it."""
    from vdistill.objectives.base import Models

    batch = make_batch(setup)
    models = Models(student=setup.student, teacher=setup.teacher, discriminator=setup.discriminator,
                    critics=dict(setup.critics) or None, guidance=setup.guidance)
    modules = [m for m in (setup.teacher, setup.student, *setup.objectives, setup.discriminator, setup.critics) if m]
    params = list({id(t): t for m in modules for t in (*m.parameters(), *m.buffers())}.values())
    counter = StepCounter(setup.parts(), params)
    hooks = counter.watch_grads([p for p in params if isinstance(p, nn.Parameter) and p.requires_grad])
    passes = BlockPasses(setup) if student_step else None
    try:
        with counter:
            total: Tensor | float = 0.0
            for obj in setup.objectives:
                if student_step:
                    out = obj(batch, models)
                elif callable(getattr(obj, "side_losses", None)):
                    out = obj.side_losses(batch, models)
                else:
                    continue
                total = total + obj.total(out)
            del out
            total.backward()
            del total
    finally:
        counter.close()
        for h in hooks:
            h.remove()
        if passes is not None:
            passes.close()
    for module in (setup.student, *setup.objectives, setup.discriminator):
        if module is not None:
            module.zero_grad(set_to_none=True)
    no_ckpt = None
    if passes is not None and passes.owners:
        no_ckpt = counter.peak + passes.extra_without_checkpointing()
    parts = [*setup.parts(), OTHER]
    return StepTrace({p: counter.flops["forward"].get(p, 0) for p in parts},
                     {p: counter.flops["backward"].get(p, 0) for p in parts}, counter.peak, no_ckpt)


@dataclass
class VideoCost:
    """FLOPs of one sampled video: ``steps`` denoiser forwards of ``per_forward`` each (x2 with CFG), the text
    encoding and the VAE decode."""

    steps: int
    cfg: bool
    per_forward: int
    text: int
    decode: int

    @property
    def total(self) -> int:
        return self.steps * (2 if self.cfg else 1) * self.per_forward + self.text + self.decode


@torch.no_grad()
def trace_videos(setup: Setup) -> tuple[VideoCost, VideoCost]:
    """One video of the step's size as the teacher samples it (its default steps and CFG) and as the student does:
    each denoiser traced once (times its steps); the text encoding (linear in the prompts) and the VAE decode,
    which both share, traced once."""
    s, t = setup.shape, setup.teacher
    c, lt, lh, lw = t.latent_shape(s.frames, s.height, s.width)
    x = torch.zeros(1, c, lt, lh, lw, device=setup.device)
    text = t.encode_text([""])
    text_flops = count_flops(t.encode_text, [""])
    decode = count_flops(t.decode_latents, x)
    costs = []
    samplers = ((t, t.defaults.steps, t.defaults.cfg != 1.0), (setup.student, student_steps(setup), False))
    for model, steps, cfg in samplers:
        g = None
        if model.has_guidance_embedding and setup.guidance is not None:
            g = torch.full((1,), float(setup.guidance), device=setup.device)
        per_forward = count_flops(model, x, torch.full((1,), 0.5, device=setup.device), text, g)
        costs.append(VideoCost(steps, cfg, per_forward, text_flops * (2 if cfg else 1), decode))
    return costs[0], costs[1]


def student_steps(setup: Setup) -> int:
    """How many steps the student samples with: its key timesteps, or a consistency objective's sampling steps."""
    for obj in setup.objectives:
        if hasattr(obj, "sampling_steps"):
            return int(obj.sampling_steps)
    if setup.student.key_timesteps is not None:
        return len(setup.student.key_timesteps) - 1
    return int(setup.student.defaults.steps)


def cast_for_precision(setup: Setup) -> torch.dtype | None:
    """Under ``bf16-mixed`` / ``16-mixed`` (and ``-true``) trace the networks in that dtype: autocast does not run
    on the meta device, and its matmuls and convolutions (where the activations are) run in it anyway. DeepSpeed
    casts every module itself."""
    prec = setup.recipe.precision
    dtype = next((d for k, d in PRECISION_DTYPES.items() if prec.startswith(k)), None)
    if dtype is None:
        return None
    for module in (setup.teacher, setup.student, *setup.objectives, setup.discriminator, setup.critics):
        if module is not None:
            module.to(dtype)
    return dtype
