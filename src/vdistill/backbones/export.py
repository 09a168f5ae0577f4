"""A student checkpoint as a model folder for ``vdistill sample`` and, for diffusers teachers (Wan, ModelScope), as a
diffusers pipeline (the ``vdistill export`` command: :mod:`vdistill.commands.export`).


The checkpoint (a Lightning ``.ckpt`` of a distillation run, adapter-only for LoRA students, or anything
:func:`~vdistill.backbones.io.load_backbone` reads) is loaded, its LoRA adapters are merged into the base
weights, and ``DIR`` gets:

* ``backbone.yaml`` + ``model.safetensors``: the vdistill format (:func:`~vdistill.backbones.io.save_backbone`),
  with the student's guidance projection and sampling record (a consistency student samples with
  ``vdistill sample --model DIR`` at its own steps and embedded guidance scale, no extra flags);
* for diffusers teachers, a folder that ``DiffusionPipeline.from_pretrained(DIR)`` loads
  (:mod:`vdistill.backbones.pipeline_export`): ``model_index.json``, the merged student (``transformer/`` or
  ``unet/``) with a fixed embedded guidance scale folded into its time embedding, a ``scheduler/`` that
  reproduces the student's sampler in ``pipe(prompt, num_inference_steps=<steps>, guidance_scale=1.0)``, and the
  teacher's ``vae/``, ``text_encoder/``, ``tokenizer/`` (hard-linked when on the same file system, else copied;
  the printed line says which);
* for LoRA students also ``pytorch_lora_weights.safetensors``: the adapter in the diffusers / peft format, for
  ``pipe.load_lora_weights(DIR)`` on the teacher's pipeline (:mod:`vdistill.backbones.lora_export`).

``DIR`` is written as a temporary folder beside it and renamed into place when complete
(:func:`vdistill.files.atomic_folder`): a failed export (a full disk, Ctrl-C) leaves no empty or half folder and
an earlier ``DIR`` unchanged; errors are one line naming the file. ``DIR`` is replaced as a whole, so a folder
holding anything but an export is refused before the checkpoint is loaded, and so is a diffusers folder that is not
a vdistill export (``model_index.json`` without ``backbone.yaml``: a teacher holds only names an export owns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from vdistill.backbones.base import Backbone
from vdistill.backbones.io import load_backbone, save_backbone
from vdistill.errors import UserError
from vdistill.files import atomic_folder, check_replaceable, naming

if TYPE_CHECKING:
    from vdistill.backbones.lora_export import LoraAdapters
    from vdistill.backbones.pipeline_export import PipelineSummary

#: the diffusers sub-folder of each family's denoiser
DIFFUSERS_SUBFOLDER = {"ModelScopeBackbone": "unet", "WanBackbone": "transformer"}
#: what an export folder holds (``*.tmp``: a temporary weights file an older vdistill may have left)
EXPORT_FILES = ("backbone.yaml", "model.safetensors", "model.safetensors*.tmp", *DIFFUSERS_SUBFOLDER.values(),
                "model_index.json", "scheduler", "vae", "text_encoder", "tokenizer", "pytorch_lora_weights.safetensors")


def check_export_folder(out: str | Path, what: str = "export folder") -> None:
    """Refuse, in one line, an ``out`` that an export may not replace (:func:`vdistill.files.check_replaceable`),
    including a diffusers pipeline folder vdistill did not write (a teacher: ``model_index.json``, no
    ``backbone.yaml``)."""
    check_replaceable(out, EXPORT_FILES, what)
    path = Path(out)
    if (path / "model_index.json").is_file() and not (path / "backbone.yaml").is_file():
        raise UserError(f"{what} {str(path)!r} holds a diffusers pipeline that is not a vdistill export (no "
                        "backbone.yaml), perhaps a teacher; it would be replaced as a whole: give a new folder")


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`write_export` wrote: the folder, the pipeline parts (``None``: vdistill format only, e.g. the
    toy backbone) and whether a LoRA adapter file was written."""

    path: Path
    pipeline: PipelineSummary | None = None
    lora: bool = False

    def describe(self) -> str:
        """One clause for the printed line: the pipeline, its scheduler, how the teacher's parts came over."""
        p = self.pipeline
        if p is None:
            return "vdistill format only"
        kind = "stock" if p.stock else \
            "vdistill's own: import vdistill.diffusion.pipeline_schedulers before DiffusionPipeline.from_pretrained"
        text = (f"diffusers {p.pipeline} with {p.scheduler} ({kind}), vae/ text_encoder/ tokenizer/ {p.parts} from "
                f"{str(p.teacher)!r}")
        return text + (", LoRA pytorch_lora_weights.safetensors" if self.lora else "")


def write_export(model: Backbone, out: str | Path, diffusers: bool = True,
                 adapters: LoraAdapters | None = None) -> ExportSummary:
    """Write ``model`` to the folder ``out`` atomically: ``backbone.yaml`` + ``model.safetensors`` and (``diffusers``,
    diffusers families) the pipeline, with ``pytorch_lora_weights.safetensors`` for a LoRA student (``adapters``:
    its :class:`~vdistill.backbones.lora_export.LoraAdapters` when ``model`` is already merged)."""
    out = Path(out)
    check_export_folder(out)
    pipeline, lora = None, False
    with atomic_folder(out, EXPORT_FILES) as tmp:
        try:
            with naming(tmp / "model.safetensors"):  # the weights are the only file written without a name
                save_backbone(model, tmp)
        except SafetensorError as err:  # safetensors reports a full disk as its own error, without the path
            raise UserError(f"cannot write {str(out / 'model.safetensors')!r}: {err}") from err
        if diffusers and type(model).__name__ in DIFFUSERS_SUBFOLDER:
            from vdistill.backbones.lora_export import adapters_of, write_diffusers_lora
            from vdistill.backbones.pipeline_export import write_pipeline

            try:
                pipeline = write_pipeline(model, tmp)
                adapters = adapters if adapters is not None else adapters_of(model)
                if adapters is not None:
                    write_diffusers_lora(model, adapters, tmp)
                    lora = True
            except SafetensorError as err:
                raise UserError(f"cannot write the diffusers pipeline into {str(out)!r}: {err}") from err
    return ExportSummary(out, pipeline, lora)


def export_student(ckpt: str | Path, out: str | Path, diffusers: bool = True) -> tuple[Backbone, ExportSummary]:
    """Load ``ckpt`` (adapters merged), write it to ``out`` (module docstring); the merged model and what was
    written."""
    check_export_folder(out)
    model = load_backbone(ckpt)
    adapters = None
    if diffusers and type(model).__name__ in DIFFUSERS_SUBFOLDER:
        from vdistill.backbones.lora_export import adapters_from_file

        adapters = adapters_from_file(ckpt)
    return model, write_export(model, out, diffusers=diffusers, adapters=adapters)
