"""Toy critics: tiny text-image and text-video CLIPs trained contrastively on the toy world.

They stand in for the official reward models of T2V-Turbo (HPSv2 / ViCLIP) in CPU experiments:

* ``toy-image``: open_clip's own ``CLIP`` class with a ViT over 16x16 frames (patch 4) and a text transformer;
  an image critic, so it scores ``num_frames`` random frames (default 2, T2V-Turbo v2) and cannot see motion.
* ``toy-video``: the :class:`~vdistill.critics.viclip.ViCLIP` module (joint space-time ViT, patch 4, 8 frames)
  at a tiny width; it sees colour, shape and motion.

Both read captions with a word-level tokenizer over the toy vocabulary and score the cosine of normalised
embeddings, differentiable w.r.t. the pixels. Weights are safetensors files whose metadata records the critic
and its size, so ``load_critic("toy-video", checkpoint="shipped")`` (the file under
``src/vdistill/assets/critics/``) or ``checkpoint="path.safetensors"`` rebuilds the right architecture before a
strict load; ``checkpoint=None`` gives random weights (tests, or training from scratch with
:class:`~vdistill.modules.critic_training.CriticTraining`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path

import open_clip
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from vdistill.critics.base import Critic
from vdistill.critics.checkpoint import load_strict, require_path
from vdistill.critics.hpsv2 import OpenClipCritic
from vdistill.critics.preprocess import normalize, resize_shortest_and_center_crop
from vdistill.critics.registry import register_critic, resolve_size
from vdistill.critics.viclip import ViCLIP, ViCLIPConfig, ViCLIPCritic
from vdistill.errors import UserError
from vdistill.world.captions import COLOURS, MOTIONS, SHAPES

TOY_WORDS: tuple[str, ...] = ("a", "moving", *COLOURS, *SHAPES, *MOTIONS)
# Toy pixels are mostly black with saturated colours: map [0, 1] to [-1, 1] rather than use photo statistics.
TOY_MEAN, TOY_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# The largest logit scale of contrastive training (CLIP clamps exp(logit_scale) at 100; ViCLIP's temp >= 0.01).
MAX_LOGIT_SCALE = 100.0

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "critics"
#: ``checkpoint="shipped"`` resolves to these files (written by ``experiments/toy/critics/critics.yaml``).
SHIPPED_CRITICS: dict[str, Path] = {"toy-image": ASSETS / "toy-image.safetensors",
                                     "toy-video": ASSETS / "toy-video.safetensors"}


class WordTokenizer:
    """Word-level tokenizer: ``<sot> words <eot>`` padded with 0 to ``context_length``; unknown words -> ``<unk>``.

    ``<eot>`` has the highest id because open_clip's text towers pool the features at the argmax token.

    Args:
        words: the vocabulary (default: the toy world's 13 words).
        context_length: tokens per prompt; longer prompts are cut and end with ``<eot>`` (as CLIP's tokenizer).
    """

    def __init__(self, words: tuple[str, ...] = TOY_WORDS, context_length: int = 8) -> None:
        self.vocab = ("<pad>", "<unk>", *words, "<sot>", "<eot>")
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __call__(self, prompts: list[str]) -> Tensor:
        """``list[str]`` -> token ids ``[N, context_length]`` (int64)."""
        ids = torch.zeros(len(prompts), self.context_length, dtype=torch.long)
        unk, sot, eot = self.index["<unk>"], self.index["<sot>"], self.index["<eot>"]
        for row, prompt in enumerate(prompts):
            words = [self.index.get(w, unk) for w in re.findall(r"[a-z]+", prompt.lower())]
            tokens = [sot, *words][: self.context_length - 1] + [eot]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids


_VOCAB = WordTokenizer().vocab_size
#: Sizes of both toy critics (the image critic ignores ``num_frames``). ``default`` is what ships.
TOY_SIZES: dict[str, ViCLIPConfig] = {
    "default": ViCLIPConfig(image_size=16, patch_size=4, num_frames=8, vision_width=64, vision_layers=3,
                            vision_heads=4, embed_dim=32, context_length=8, vocab_size=_VOCAB, text_width=64,
                            text_layers=2, text_heads=4),
    "tiny": ViCLIPConfig(image_size=8, patch_size=4, num_frames=4, vision_width=32, vision_layers=1,
                         vision_heads=2, embed_dim=16, context_length=8, vocab_size=_VOCAB, text_width=32,
                         text_layers=1, text_heads=2),
}


def build_toy_clip(cfg: ViCLIPConfig) -> open_clip.CLIP:
    """open_clip's ``CLIP`` at the size of ``cfg`` (random weights)."""
    vision = dict(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.vision_width,
                  layers=cfg.vision_layers, head_width=cfg.vision_width // cfg.vision_heads)
    text = dict(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.text_width,
                heads=cfg.text_heads, layers=cfg.text_layers)
    return open_clip.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text)


class ToyImageCritic(OpenClipCritic):
    """The toy image critic: per-frame cosine of open_clip ``CLIP`` embeddings, averaged over random frames.

    Args:
        model: the open_clip ``CLIP``.
        cfg: its size (recorded in saved files).
        num_frames: random frames scored per video.
    """

    name = "toy-image"
    kind = "image"

    def __init__(self, model: open_clip.CLIP, cfg: ViCLIPConfig, num_frames: int = 2) -> None:
        super().__init__(num_frames)
        self.model = model
        self.cfg = cfg
        self.tokenizer = WordTokenizer(context_length=cfg.context_length)

    def preprocess(self, frames: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> ``[N, 3, S, S]`` in [-1, 1] (shortest side to S, centre crop)."""
        return normalize(resize_shortest_and_center_crop(frames, self.cfg.image_size), TOY_MEAN, TOY_STD)

    def logit_scale(self) -> Tensor:
        """The learnable contrastive scale ``exp(logit_scale)`` (CLIP), clamped at 100; unused for scoring."""
        return self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


class ToyVideoCritic(ViCLIPCritic):
    """The toy video critic: a tiny :class:`ViCLIP` (clip embedding vs prompt embedding, cosine).

    Args:
        model: the :class:`ViCLIP`.
        cfg: its size.
        num_frames: frames per clip (default: ``cfg.num_frames``, evenly strided with a random offset).
    """

    name = "toy-video"

    def __init__(self, model: ViCLIP, cfg: ViCLIPConfig, num_frames: int | None = None) -> None:
        # Critic's init, not ViCLIPCritic's: that one would load CLIP's BPE vocabulary only to replace it.
        Critic.__init__(self, num_frames or cfg.num_frames)
        self.model, self.cfg, self.image_size = model, cfg, cfg.image_size
        self.mean, self.std = TOY_MEAN, TOY_STD
        self.tokenizer = WordTokenizer(context_length=cfg.context_length)

    def logit_scale(self) -> Tensor:
        """The learnable contrastive scale ``1 / temp`` (ViCLIP's temperature, >= 0.01); unused for scoring."""
        return 1.0 / self.model.temp.clamp(min=1.0 / MAX_LOGIT_SCALE)


ToyCritic = ToyImageCritic | ToyVideoCritic


def shipped_critic_path(name: str) -> Path:
    """The shipped weights of toy critic ``name``; a :class:`UserError` saying how to make them when missing."""
    if name not in SHIPPED_CRITICS:
        raise UserError(f"critic {name!r} ships no weights; critics with shipped weights: {sorted(SHIPPED_CRITICS)}")
    path = SHIPPED_CRITICS[name]
    if not path.is_file():
        raise UserError(f"the shipped {name} weights are missing: {str(path)!r} does not exist. Train them with "
                        f"`vdistill fit --config experiments/toy/critics/critics.yaml` and copy "
                        f"runs/toy/critics/export/{name}.safetensors there, or pass checkpoint=<file.safetensors>")
    return path


def save_toy_critic(critic: ToyCritic, path: str | Path) -> Path:
    """Write ``critic``'s weights as safetensors, with its name and size in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in critic.model.state_dict().items()}
    save_file(state, str(path), metadata={"vdistill_critic": critic.name, "config": json.dumps(asdict(critic.cfg))})
    return path


def _read(name: str, checkpoint: str | Path | None, size: str | ViCLIPConfig | None):
    """``(config, state dict or None)``: the file's recorded size unless ``size`` is given, else ``default``."""
    if checkpoint is None:
        return resolve_size(name, size or "default", TOY_SIZES), None
    path = shipped_critic_path(name) if str(checkpoint) == "shipped" else require_path(checkpoint, f"{name} weights")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("vdistill_critic", name) != name:
        raise UserError(f"{str(path)!r} holds {meta['vdistill_critic']} weights, not {name}")
    if size is None and "config" in meta:
        known = {f.name for f in fields(ViCLIPConfig)}
        cfg = ViCLIPConfig(**{k: v for k, v in json.loads(meta["config"]).items() if k in known})
    else:
        cfg = resolve_size(name, size or "default", TOY_SIZES)
    return cfg, load_file(str(path))


@register_critic("toy-image")
def load_toy_image(checkpoint: str | Path | None = None, size: str | ViCLIPConfig | None = None,
                   num_frames: int = 2) -> ToyImageCritic:
    """``load_critic("toy-image", checkpoint="shipped" | "file.safetensors" | None, num_frames=2)``."""
    cfg, state = _read("toy-image", checkpoint, size)
    model = build_toy_clip(cfg)
    if state is not None:
        load_strict(model, state, f"toy-image {str(checkpoint)!r}")
    return ToyImageCritic(model, cfg, num_frames=num_frames)


@register_critic("toy-video")
def load_toy_video(checkpoint: str | Path | None = None, size: str | ViCLIPConfig | None = None,
                   num_frames: int | None = None) -> ToyVideoCritic:
    """``load_critic("toy-video", checkpoint="shipped" | "file.safetensors" | None)``."""
    cfg, state = _read("toy-video", checkpoint, size)
    model = ViCLIP(cfg)
    if state is None:
        with torch.no_grad():
            model.temp.fill_(0.07)  # CLIP's initial temperature rather than ViCLIP's trained 0.01
            # ViCLIP zero-inits the temporal embedding because it inflates an image CLIP; from scratch, zeros leave
            # the frames unordered for long (measured: left/right stuck at chance for 1,000 steps).
            pos = model.vision_encoder.temporal_positional_embedding
            pos.normal_(std=cfg.vision_width ** -0.5)
    else:
        load_strict(model, state, f"toy-video {str(checkpoint)!r}")
    return ToyVideoCritic(model, cfg, num_frames=num_frames)
