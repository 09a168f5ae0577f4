"""Which backbone a diffusers pipeline folder is: its ``model_index.json`` read as data, checked against our table.

``save_pretrained`` of a diffusers pipeline (and every hub snapshot) writes ``model_index.json``: the pipeline's
class under ``_class_name`` and each component as ``name: [library, class]`` (``[null, null]`` for an optional
component that is absent)::

    {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
     "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "UMT5EncoderModel"],
     "tokenizer": ["transformers", "T5TokenizerFast"], "scheduler": ["diffusers", "UniPCMultistepScheduler"]}

The file is only read as JSON: nothing it names is imported. Its pipeline class picks our backbone by short name
(:data:`PIPELINE_BACKBONES`, a key of :data:`vdistill.registry.COMPONENTS`), and the components our backbone loads
must be there with the classes it loads them with (:data:`PIPELINE_COMPONENTS`).
"""

from __future__ import annotations

import json
from pathlib import Path

from vdistill.errors import UserError

MODEL_INDEX = "model_index.json"

#: diffusers pipeline class -> the short name of the backbone that loads its folder
PIPELINE_BACKBONES: dict[str, str] = {
    "WanPipeline": "WanBackbone",
    "TextToVideoSDPipeline": "ModelScopeBackbone",
    "HunyuanVideoPipeline": "HunyuanVideoBackbone",
}

#: pipeline class -> {component our backbone loads: the classes model_index.json may name for it (None: any)}.
#: The tokenizers are loaded from their own files, whatever class wrote them (``T5TokenizerFast``,
#: ``TokenizersBackend`` in transformers 5, ``CLIPTokenizer``).
PIPELINE_COMPONENTS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "WanPipeline": {"transformer": ("WanTransformer3DModel",), "vae": ("AutoencoderKLWan",),
                    "text_encoder": ("UMT5EncoderModel",), "tokenizer": None},
    "TextToVideoSDPipeline": {"unet": ("UNet3DConditionModel",), "vae": ("AutoencoderKL",),
                              "text_encoder": ("CLIPTextModel",), "tokenizer": None},
    "HunyuanVideoPipeline": {"transformer": ("HunyuanVideoTransformer3DModel",), "vae": ("AutoencoderKLHunyuanVideo",),
                             "text_encoder": ("LlamaModel",), "tokenizer": None,
                             "text_encoder_2": ("CLIPTextModel",), "tokenizer_2": None},
}

#: components our backbones cannot use: a second expert (Wan2.2 A14B switches transformers at boundary_ratio)
UNSUPPORTED_COMPONENTS = {"transformer_2": "a second expert transformer (Wan2.2's two-expert pipelines)"}


def is_pipeline_folder(path: Path) -> bool:
    return (path / MODEL_INDEX).is_file()


def read_model_index(folder: Path) -> dict:
    """``model_index.json`` of ``folder`` as a mapping (a one-line error naming the file when it is not one)."""
    file = folder / MODEL_INDEX
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{str(file)!r} is not valid JSON: {err}") from None
    if not isinstance(index, dict):
        raise UserError(f"{str(file)!r} must be a JSON object with _class_name, got a {type(index).__name__}")
    return index


def pipeline_backbone(folder: Path) -> str:
    """The short name of the backbone that loads the pipeline folder ``folder``, once its ``model_index.json``
    names a supported pipeline class with the components that backbone loads (else one line saying what is
    wrong: the folder, the class, the supported ones or the missing component)."""
    index = read_model_index(folder)
    name = index.get("_class_name")
    where = f"diffusers folder {str(folder)!r}"
    if name not in PIPELINE_BACKBONES:
        supported = ", ".join(f"{p} ({b})" for p, b in PIPELINE_BACKBONES.items())
        raise UserError(f"{where}: pipeline class {name!r} in {MODEL_INDEX} is not supported; supported: "
                        f"{supported}")
    problems = []
    for part, classes in PIPELINE_COMPONENTS[name].items():
        entry = index.get(part)
        named = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        if named is None:
            problems.append(f"no {part!r} component")
        elif classes is not None and named not in classes:
            problems.append(f"{part!r} is {named} (expected {' or '.join(classes)})")
    for part, what in UNSUPPORTED_COMPONENTS.items():
        entry = index.get(part)
        if isinstance(entry, list) and any(v is not None for v in entry):
            problems.append(f"{part!r} is {what}, which it does not load")
    if problems:
        raise UserError(f"{where}: its {MODEL_INDEX} does not describe a {name} that {PIPELINE_BACKBONES[name]} "
                        f"loads: {'; '.join(problems)}")
    return PIPELINE_BACKBONES[name]
