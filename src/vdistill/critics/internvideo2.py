"""InternVideo2 Stage2-1B (Wang et al. 2024; official code: OpenGVLab/InternVideo
``InternVideo2/multi_modality/models/``: ``internvideo2_stage2.py``, ``backbones/internvideo2/internvideo2.py``,
``backbones/internvideo2/pos_embed.py``, ``backbones/bert/xbert.py``), as T2V-Turbo scores with it
(``reward_fn.get_intern_vid2_score_fn`` and ``intern_vid2/demo_utils.py``).

``InternVideo2-stage2_1b-224p-f4.pt`` is a DeepSpeed file: ``{"module": state_dict, ...}``. Keys used here:

* ``vision_encoder.*`` (``PretrainInternVideo2``, 1B): ``patch_embed.proj`` (Conv3d, kernel (1, 14, 14), bias),
  ``cls_token``, ``pos_embed [1, 1 + 4*256, 1408]`` (4 frames, time-major tokens), ``img_pos_embed
  [1, 1 + 256, 1408]`` (``sep_image_video_pos_embed=True``, used for one frame), ``blocks.N.{norm1, attn.qkv
  (no bias), attn.q_norm, attn.k_norm, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`` with RMSNorm
  (eps 1e-6) and q/k RMSNorm over the full width, and the attention pool ``clip_projector.{norm1_q, norm1_k,
  norm1_v, cross_attn.{q, k, v, q_bias, k_bias, v_bias, proj}}`` -> 768.
* ``vision_proj`` (768 -> 512), ``text_proj`` (1024 -> 512), ``temp``.
* ``text_encoder.bert.*``: BERT-large; the text-only pass (``mode="text"``) runs layers 0-18 (``fusion_layer``
  19), takes the [CLS] state and ``text_proj``. Tokens (:func:`tokenize_cls_only`): InternVideo2's own
  ``BertTokenizer`` (``backbones/bert/tokenization_bert.py``, T2V-Turbo's ``intern_vid2`` copy too) on the
  bert-large-uncased vocabulary, called with ``padding="max_length", truncation=True, max_length=40``. It is
  transformers' python ``BertTokenizer`` except that one sequence is ``[CLS] X`` with NO closing ``[SEP]``
  (``build_inputs_with_special_tokens``), so up to 39 word pieces follow ``[CLS]``.

Other frame counts (``num_frames`` other than the checkpoint's 4): as the official loaders do
(``interpolate_pos_embed_internvideo2_new`` in ``demo/utils.py setup_internvideo2`` and ``tasks/shared_utils.py``
with ``origin_num_frames=4``; ``interpolate_pos_embed_internvideo2(..., orig_t_size=4)`` in T2V-Turbo's
``pretrain_internvideo2_1b_patch14_224``), the model is built for ``num_frames`` and the checkpoint's
``pos_embed`` is resampled once, at load, in the checkpoint's precision: the class token's entry kept, the
``[T0, 256, C]`` grid linearly interpolated along time (``F.interpolate(mode="linear")``, align_corners False).
One frame uses ``img_pos_embed`` (``use_image``).

Dropped by name (:data:`IGNORED_PREFIXES`): UMT distillation heads ``vision_encoder.clip_decoder.*``,
``vision_encoder.final_clip_decoder.*``, their ``clip_pos_embed`` / ``clip_img_pos_embed``; ``itm_head.*``;
the MLM head ``text_encoder.cls.*``; BERT fusion layers ``text_encoder.bert.encoder.layer.19+``; the
``position_ids`` buffer old transformers saved (and a pooler, if present).

Deviations from the official code, on purpose: plain PyTorch SDPA instead of flash-attn (the official kernels do
not run on CPU); the MLP uses tanh-approximated GELU, which is what the official fused MLP
(flash_attn ``FusedMLP``, ``activation="gelu_approx"``) computes (``mlp_gelu="none"`` gives the exact GELU of the
non-fused path).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint
from transformers import BertConfig, BertModel, BertTokenizer, PreTrainedTokenizerBase

from vdistill.critics.base import Critic
from vdistill.critics.checkpoint import load_strict, read_checkpoint, require_path
from vdistill.critics.layers import resample_temporal
from vdistill.critics.preprocess import normalize, resize_shortest_and_center_crop, resolve_normalization
from vdistill.critics.registry import register_critic, resolve_size
from vdistill.errors import UserError

IGNORED_PREFIXES = (
    "vision_encoder.clip_decoder.", "vision_encoder.final_clip_decoder.",
    "vision_encoder.clip_pos_embed", "vision_encoder.clip_img_pos_embed",
    "itm_head.", "text_encoder.cls.", "text_encoder.bert.pooler.", "text_encoder.bert.embeddings.position_ids",
)
BERT_LAYER = "text_encoder.bert.encoder.layer."

# bert-large-uncased (the official configs/config_bert_large.json), cut at fusion_layer 19.
BERT_LARGE_TEXT = dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=19, num_attention_heads=16,
                       intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2)


@dataclass(frozen=True)
class InternVideo2Config:
    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 4  # frames pos_embed covers (the checkpoint's; the loader resamples it to the critic's)
    width: int = 1408
    depth: int = 40
    heads: int = 16
    mlp_dim: int = 6144
    mlp_gelu: str = "tanh"
    pool_heads: int = 16
    clip_embed_dim: int = 768
    embed_dim: int = 512
    separate_image_pos_embed: bool = True
    text: dict = field(default_factory=lambda: dict(BERT_LARGE_TEXT))
    max_text_length: int = 40


INTERNVIDEO2_SIZES = {
    "full": InternVideo2Config(),
    "tiny": InternVideo2Config(
        image_size=28, num_frames=4, width=32, depth=2, heads=4, mlp_dim=64, pool_heads=4, clip_embed_dim=24,
        embed_dim=16, text=dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(1e-5 * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(dim), RMSNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, x.shape[-1])).unbind(2)  # official layout: (3, heads, head_dim)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (self.q_norm(q), self.k_norm(k), v))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu: str) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate=gelu), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = RMSNorm(cfg.width), Attention(cfg.width, cfg.heads), LayerScale(cfg.width)
        self.norm2, self.mlp = RMSNorm(cfg.width), Mlp(cfg.width, cfg.mlp_dim, cfg.mlp_gelu)
        self.ls2 = LayerScale(cfg.width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.q_bias, self.k_bias, self.v_bias = (nn.Parameter(torch.zeros(dim)) for _ in range(3))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (F.linear(x, lin.weight, b).unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for x, lin, b in ((q, self.q, self.q_bias), (k, self.k, self.k_bias), (v, self.v, self.v_bias)))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class AttentionPool(nn.Module):
    """``clip_projector``: the mean token queries all tokens (official ``AttentionPoolingBlock``)."""

    def __init__(self, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.norm1_q, self.norm1_k, self.norm1_v = (nn.LayerNorm(dim, eps=1e-5) for _ in range(3))
        self.cross_attn = CrossAttention(dim, heads, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        q = self.norm1_q(x.mean(1, keepdim=True))
        return self.cross_attn(q, self.norm1_k(x), self.norm1_v(x)).squeeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv3d(3, cfg.width, (1, p, p), (1, p, p))


class InternVideo2Vision(nn.Module):
    """The 1B video ViT up to the attention pool; parameter names are the official ``vision_encoder.*`` ones."""

    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        self.patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + cfg.num_frames * self.patches, cfg.width))
        if cfg.separate_image_pos_embed:
            self.img_pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + self.patches, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.clip_projector = AttentionPool(cfg.width, cfg.pool_heads, cfg.clip_embed_dim)
        self.grad_checkpointing = False

    def position_embedding(self, frames: int) -> Tensor:
        """``[1, 1 + frames * patches, C]``: ``pos_embed`` as loaded (one frame: ``img_pos_embed``).

        The loader already resampled ``pos_embed`` to the critic's frame count; another count (a direct call)
        is resampled here from it with the same formula.
        """
        if frames == 1 and hasattr(self, "img_pos_embed"):
            return self.img_pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[0, 1:].unflatten(0, (-1, self.patches))
        if frames == 1:  # joint image/video embedding: the official mean over time
            return torch.cat([cls, grid.mean(0)[None]], dim=1)
        return torch.cat([cls, resample_temporal(grid, frames).flatten(0, 1)[None]], dim=1)

    def forward(self, video: Tensor) -> Tensor:
        """Normalised ``[B, 3, T, H, W]`` -> pooled ``[B, clip_embed_dim]``."""
        x = self.patch_embed.proj(video).flatten(3).permute(0, 2, 3, 1).flatten(1, 2)  # [B, T*L, C], time-major
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.position_embedding(video.shape[2]).to(x.dtype)
        for blk in self.blocks:
            x = grad_checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing else blk(x)
        return self.clip_projector(x)


class BertTextEncoder(nn.Module):
    """Holds ``bert`` so keys read ``text_encoder.bert.*`` as in the official ``BertForMaskedLM``."""

    def __init__(self, text: dict) -> None:
        super().__init__()
        self.bert = BertModel(BertConfig(**text), add_pooling_layer=False)


class InternVideo2Stage2(nn.Module):
    """The official module tree, scoring parts only."""

    def __init__(self, cfg: InternVideo2Config) -> None:
        super().__init__()
        self.vision_encoder = InternVideo2Vision(cfg)
        self.text_encoder = BertTextEncoder(cfg.text)
        self.vision_proj = nn.Linear(cfg.clip_embed_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text["hidden_size"], cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(0.07))  # contrastive temperature; unused for scoring


class InternVideo2Critic(Critic):
    """InternVideo2 video critic: cosine of the 512-d video and text projections.

    Args:
        model: the :class:`InternVideo2Stage2` with weights.
        tokenizer: bert-large-uncased's ``BertTokenizer``.
        num_frames: frames per clip (default: the checkpoint's 4; T2V-Turbo v1 used 8).
        normalization: ``"imagenet"`` (T2V-Turbo, the official demo) or ``"openai"`` or ``(mean, std)``.
    """

    name = "internvideo2"
    kind = "video"

    def __init__(self, model: InternVideo2Stage2, tokenizer: PreTrainedTokenizerBase, cfg: InternVideo2Config,
                 num_frames: int | None = None, normalization: str | tuple = "imagenet") -> None:
        super().__init__(num_frames or cfg.num_frames)
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = cfg.image_size
        self.max_text_length = cfg.max_text_length
        self.mean, self.std = resolve_normalization(normalization)

    def preprocess(self, frames: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> normalised ``[N, 3, 224, 224]`` (shortest side, centre crop)."""
        return normalize(resize_shortest_and_center_crop(frames, self.image_size), self.mean, self.std)

    def _encode(self, pixels: Tensor) -> Tensor:
        b, n = pixels.shape[:2]
        x = self.preprocess(pixels.flatten(0, 1)).unflatten(0, (b, n))
        return self.model.vision_proj(self.model.vision_encoder(x.transpose(1, 2)))

    def tokenize(self, prompts: list[str]) -> dict[str, Tensor]:
        """The official tokens: ``input_ids`` / ``attention_mask`` ``[N, 40]`` (see :func:`tokenize_cls_only`)."""
        return tokenize_cls_only(self.tokenizer, prompts, self.max_text_length)

    def _encode_text(self, prompts: list[str]) -> Tensor:
        tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        out = self.model.text_encoder.bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return self.model.text_proj(out.last_hidden_state[:, 0])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.vision_encoder.grad_checkpointing = enable


def tokenize_cls_only(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_length: int) -> dict[str, Tensor]:
    """InternVideo2's text tokens: ``[CLS]``, at most ``max_length - 1`` word pieces, ``[PAD]`` to ``max_length``.

    Equals the official ``BertTokenizer(prompts, padding="max_length", truncation=True, max_length=max_length)``
    (``[CLS] X``, no ``[SEP]``; truncation keeps the first ``max_length - 1`` pieces since one special token is
    added). The word pieces come from ``tokenizer`` without its own special tokens, so transformers' slow or fast
    ``BertTokenizer`` and the official class give the same ids. Returns long ``[N, max_length]`` tensors.
    """
    pieces = tokenizer(list(prompts), add_special_tokens=False, truncation=True, max_length=max_length - 1,
                       return_attention_mask=False, return_token_type_ids=False)["input_ids"] if prompts else []
    ids = torch.full((len(pieces), max_length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(pieces):
        seq = [tokenizer.cls_token_id, *seq]
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def adapt_pos_embed(pos: Tensor, checkpoint_frames: int, frames: int, patches: int, what: str) -> Tensor:
    """The official loader's temporal branch: checkpoint ``pos_embed [1, 1 + T0 * patches, C]`` -> ``frames``.

    ``interpolate_pos_embed_internvideo2(_new)`` (``pos_embed.py``): the class token's entry is kept, the
    ``[T0, patches, C]`` grid is interpolated linearly along time, in the checkpoint's dtype.
    """
    if pos.ndim != 3 or pos.shape[1] != 1 + checkpoint_frames * patches:
        raise UserError(f"{what}: vision_encoder.pos_embed has shape {tuple(pos.shape)}, expected "
                        f"[1, {1 + checkpoint_frames * patches}, C] ({checkpoint_frames} frames x {patches} patches)")
    if frames == checkpoint_frames:
        return pos
    grid = resample_temporal(pos[0, 1:].unflatten(0, (checkpoint_frames, patches)), frames)
    return torch.cat([pos[:, :1], grid.flatten(0, 1)[None]], dim=1)


def ignored_key(key: str, text_layers: int) -> bool:
    """True for the official keys scoring does not use (see the module doc)."""
    if key.startswith(IGNORED_PREFIXES):
        return True
    if key.startswith(BERT_LAYER):
        return int(key[len(BERT_LAYER):].split(".", 1)[0]) >= text_layers
    return False


@register_critic("internvideo2")
def load_internvideo2(checkpoint: str | Path | None = None, tokenizer: str | Path | PreTrainedTokenizerBase |
                      None = None, size: str | InternVideo2Config = "full", num_frames: int | None = None,
                      normalization: str | tuple = "imagenet", trust_checkpoint: bool = False) -> InternVideo2Critic:
    """``load_critic("internvideo2", checkpoint="InternVideo2-stage2_1b-224p-f4.pt", tokenizer="bert-large-uncased/")``.

    ``tokenizer``: the bert-large-uncased folder (``vocab.txt``), or a tokenizer object (transformers'
    ``BertTokenizer(Fast)`` or InternVideo2's own); either way the text gets the official ``[CLS]``-only tokens.
    ``num_frames``: frames per clip; the checkpoint's 4-frame ``pos_embed`` is resampled to it at load.
    """
    if tokenizer is None:
        raise UserError("internvideo2 needs tokenizer=<bert-large-uncased folder with vocab.txt>")
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        tokenizer = BertTokenizer.from_pretrained(require_path(tokenizer, "InternVideo2 tokenizer folder"),
                                                  local_files_only=True)
    cfg = resolve_size("internvideo2", size, INTERNVIDEO2_SIZES)
    frames = num_frames or cfg.num_frames
    if frames < 1:
        raise UserError(f"internvideo2: num_frames must be >= 1, got {frames}")
    model = InternVideo2Stage2(replace(cfg, num_frames=frames))  # built for the frames it scores, as the official
    if checkpoint is not None:
        what = f"InternVideo2 {str(checkpoint)!r}"
        state = dict(read_checkpoint(checkpoint, "module", "InternVideo2", trust_checkpoint))
        key = "vision_encoder.pos_embed"
        if key in state:
            patches = model.vision_encoder.patches
            state[key] = adapt_pos_embed(state[key], cfg.num_frames, frames, patches, what)
        layers = cfg.text["num_hidden_layers"]
        load_strict(model, state, what, ignore=lambda k: ignored_key(k, layers))
    return InternVideo2Critic(model, tokenizer, cfg, num_frames=frames, normalization=normalization)
