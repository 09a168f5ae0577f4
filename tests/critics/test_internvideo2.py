"""InternVideo2 Stage2: official key names, the official (naive-attention) forward, the checkpoint's pos-emb
resampled at load as the official loaders do, the keys dropped by name, the official [CLS]-only tokens and the
BERT text path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from critic_files import write_official
from transformers import BertTokenizer, BertTokenizerFast

from vdistill.critics import load_critic
from vdistill.critics.internvideo2 import INTERNVIDEO2_SIZES, InternVideo2Stage2, ignored_key, tokenize_cls_only
from vdistill.errors import UserError

try:  # transformers >= 5: BertTokenizer is the tokenizers-backed class, the python one is BertTokenizerLegacy
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as PythonBertTokenizer
except ImportError:  # transformers 4: BertTokenizer is the python one
    PythonBertTokenizer = BertTokenizer


class OfficialBertTokenizer(PythonBertTokenizer):
    """InternVideo2's ``models/backbones/bert/tokenization_bert.py`` (T2V-Turbo's ``intern_vid2`` copy too):
    transformers' python BertTokenizer, except that one sequence is ``[CLS] X`` (no ``[SEP]``)."""

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        if token_ids_1 is None:
            return [self.cls_token_id] + token_ids_0
        return super().build_inputs_with_special_tokens(token_ids_0, token_ids_1)


def official_tokens(tokenizer, prompts):
    """The official call (``get_txt_feat``, T2V-Turbo's ``score_fn``)."""
    out = tokenizer(prompts, padding="max_length", truncation=True, max_length=40, return_tensors="pt",
                    return_token_type_ids=False)
    return out["input_ids"], out["attention_mask"]


CKPT = "InternVideo2-stage2_1b-224p-f4.pt"  # the name write_official gives the tiny file


def test_vision_keys_are_the_official_ones():
    """Key list written from the official PretrainInternVideo2 (1B, sep_image_video_pos_embed=True)."""
    cfg = INTERNVIDEO2_SIZES["tiny"]
    block = ["norm1.weight", "attn.qkv.weight", "attn.q_norm.weight", "attn.k_norm.weight", "attn.proj.weight",
             "attn.proj.bias", "ls1.gamma", "norm2.weight", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
             "mlp.fc2.bias", "ls2.gamma"]
    pool = [f"{n}.{p}" for n in ("norm1_q", "norm1_k", "norm1_v") for p in ("weight", "bias")]
    pool += ["cross_attn.q.weight", "cross_attn.k.weight", "cross_attn.v.weight", "cross_attn.q_bias",
             "cross_attn.k_bias", "cross_attn.v_bias", "cross_attn.proj.weight", "cross_attn.proj.bias"]
    vision = ["patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "img_pos_embed"]
    vision += [f"blocks.{i}.{k}" for i in range(cfg.depth) for k in block] + [f"clip_projector.{k}" for k in pool]
    sd = InternVideo2Stage2(cfg).state_dict()
    got = {k for k in sd if not k.startswith("text_encoder.")}
    assert got == {f"vision_encoder.{k}" for k in vision} | {
        "vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias", "temp"}
    assert "text_encoder.bert.encoder.layer.1.attention.self.query.weight" in sd
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in sd
    assert sd["vision_encoder.pos_embed"].shape == (1, 1 + 4 * 4, cfg.width)  # 4 frames x (28/14)^2 patches


def official_interpolate(pos, t0, t):
    """pos_embed.py interpolate_pos_embed_internvideo2, temporal branch."""
    extra, tokens = pos[:, :1], pos[:, 1:]
    c = pos.shape[-1]
    tokens = tokens.view(1, t0, -1, c).permute(0, 2, 3, 1).reshape(-1, c, t0)
    tokens = F.interpolate(tokens, size=t, mode="linear")
    tokens = tokens.view(1, -1, c, t).permute(0, 3, 1, 2).reshape(1, -1, c)
    return torch.cat([extra, tokens], dim=1)


def official_vision_forward(m, video, heads, pool_heads, pos):
    """PretrainInternVideo2.forward with the non-flash path (_naive_attn) and AttentionPoolingBlock."""
    x = m.patch_embed.proj(video)
    x = x.flatten(3).permute(0, 2, 3, 1)
    b, t, n, c = x.shape
    x = torch.cat([m.cls_token.expand(b, -1, -1), x.reshape(b, t * n, c)], dim=1) + pos
    for blk in m.blocks:
        h = blk.norm1(x)
        qkv = blk.attn.qkv(h).reshape(b, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        n = q.shape[2]
        q = blk.attn.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(b, n, heads, -1).transpose(1, 2)
        k = blk.attn.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(b, n, heads, -1).transpose(1, 2)
        attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        x = x + blk.ls1(blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    p = m.clip_projector
    xq, xk, xv = p.norm1_q(x.mean(1, keepdim=True)), p.norm1_k(x), p.norm1_v(x)
    ca = p.cross_attn
    q = F.linear(xq, ca.q.weight, ca.q_bias).reshape(b, 1, pool_heads, -1).transpose(1, 2)
    k = F.linear(xk, ca.k.weight, ca.k_bias).reshape(b, -1, pool_heads, c // pool_heads).transpose(1, 2)
    v = F.linear(xv, ca.v.weight, ca.v_bias).reshape(b, -1, pool_heads, c // pool_heads).transpose(1, 2)
    attn = ((q * (c // pool_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    return ca.proj((attn @ v).transpose(1, 2).reshape(b, 1, -1)).squeeze(1)


def checkpoint_pos_embed(folder):
    return torch.load(folder / CKPT, weights_only=True)["module"]["vision_encoder.pos_embed"]


@pytest.mark.parametrize("frames", [8, 2, 4, 1])
def test_checkpoint_pos_embed_is_resampled_at_load_as_the_official_loader(make_critic, tmp_path, frames):
    """setup_internvideo2 / T2V-Turbo build the model for ``num_frames`` and resample the 4-frame checkpoint."""
    critic = make_critic("internvideo2", num_frames=frames)
    pos = critic.model.vision_encoder.pos_embed
    official = official_interpolate(checkpoint_pos_embed(tmp_path), 4, frames)
    assert pos.shape == (1, 1 + frames * 4, INTERNVIDEO2_SIZES["tiny"].width)  # 4 patches per tiny frame
    assert torch.equal(pos, official)
    # half precision: resampled in the checkpoint's float32 first, then cast (model.to(float16) comes last)
    critic.to(torch.bfloat16)
    expected = critic.model.vision_encoder.img_pos_embed if frames == 1 else official.to(torch.bfloat16)
    assert torch.equal(critic.model.vision_encoder.position_embedding(frames), expected)


def test_a_pos_embed_of_the_wrong_length_is_one_line(make_critic):
    def cut(sd):
        return {**sd, "vision_encoder.pos_embed": sd["vision_encoder.pos_embed"][:, :-1]}

    with pytest.raises(UserError, match=r"vision_encoder.pos_embed has shape \(1, 16, 32\), expected \[1, 17, C\]"):
        make_critic("internvideo2", mutate=cut, num_frames=8)


def test_num_frames_below_one_is_one_line(make_critic):
    with pytest.raises(UserError, match=r"^internvideo2: num_frames must be >= 1, got -2$"):
        make_critic("internvideo2", num_frames=-2)


@pytest.mark.parametrize("frames", [4, 8, 1])
def test_vision_matches_official_naive_forward(make_critic, tmp_path, frames):
    critic = make_critic("internvideo2", num_frames=frames)
    cfg, m = INTERNVIDEO2_SIZES["tiny"], critic.model.vision_encoder
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():  # make LayerScale, norms and biases non-trivial
            if "gamma" in name or "norm" in name or "bias" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
        video = torch.randn(2, 3, frames, 28, 28)
        if frames == 1:
            pos = m.img_pos_embed
        else:
            pos = official_interpolate(checkpoint_pos_embed(tmp_path), cfg.num_frames, frames)
        ref = official_vision_forward(m, video, cfg.heads, cfg.pool_heads, pos)
        torch.testing.assert_close(m(video), ref, atol=1e-5, rtol=1e-4)


def test_ignored_keys_are_dropped_by_name_only():
    assert ignored_key("vision_encoder.clip_decoder.3.head.weight", 19)
    assert ignored_key("vision_encoder.final_clip_decoder.norm.bias", 19)
    assert ignored_key("vision_encoder.clip_pos_embed", 19)
    assert ignored_key("itm_head.weight", 19) and ignored_key("text_encoder.cls.predictions.bias", 19)
    assert ignored_key("text_encoder.bert.encoder.layer.19.crossattention.self.key.weight", 19)
    assert ignored_key("text_encoder.bert.encoder.layer.23.output.dense.weight", 19)
    assert not ignored_key("text_encoder.bert.encoder.layer.18.output.dense.weight", 19)
    assert not ignored_key("vision_encoder.pos_embed", 19) and not ignored_key("text_proj.weight", 19)
    assert not ignored_key("vision_encoder.blocks.0.attn.qkv.weight", 19)


def test_an_unknown_extra_key_still_fails(make_critic):
    def add(sd):
        return {**sd, "vision_encoder.mystery_head.weight": torch.zeros(1)}

    with pytest.raises(UserError, match=r"missing keys \(0\) \[\]; unexpected keys \(1\) \[vision_encoder.myst"):
        make_critic("internvideo2", mutate=add)


WORDS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *",.!?'\"-:;()&/", *"0123456789",
         *"abcdefghijklmnopqrstuvwxyz", "a", "the", "cat", "dog", "run", "on", "beach", "red", "car", "drive",
         "slow", "quick", "naive", "cafe", "resume", "ecole", "ca", "uber", "ete", "don", "stop", "motion", "and",
         "##s", "##ly", "##ing", "##e", "##t", "\u732b", "\u72d7"]
TRICKY = ["a cat runs on the beach", "The RED car drives slowly, quickly!", "naïve café résumé", "ÉCOLE Ça Über",
          "e\u0301te\u0301 combining", "猫 and 狗", "a猫b", "", "   ", "tabs\tand\nnew lines\r\n",
          "ctrl\x00chars\x07 \ufffd", "emoji \U0001F600 zebra", "the [SEP] car [CLS] [PAD] ##s", "x" * 120,
          "don't stop-motion (slow)/fast", " ".join(["cat"] * 38), " ".join(["cats"] * 30), "cat " * 40]


@pytest.fixture
def rich_vocab(tmp_path):
    folder = tmp_path / "bert_rich"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return folder


def test_tokens_are_the_official_cls_only_ones(rich_vocab):
    official = OfficialBertTokenizer.from_pretrained(rich_vocab, local_files_only=True)
    ids, mask = official_tokens(official, TRICKY)
    assert ids.shape == (len(TRICKY), 40) and (ids[:, 0] == official.cls_token_id).all()
    no_literal_sep = [i for i, p in enumerate(TRICKY) if "[SEP]" not in p]
    assert not (ids[no_literal_sep] == official.sep_token_id).any()  # no closing [SEP]
    assert mask[-2].all() and ids[-2, 39] == official.convert_tokens_to_ids("cat")  # 60 pieces: [CLS] + first 39
    assert mask[8].sum() == 1  # whitespace only: [CLS] alone
    transformers_one = BertTokenizer.from_pretrained(rich_vocab, local_files_only=True)  # what load_critic builds
    others = [c.from_pretrained(rich_vocab, local_files_only=True) for c in (BertTokenizerFast, PythonBertTokenizer)]
    for tok in (transformers_one, *others, official):
        got = tokenize_cls_only(tok, TRICKY, 40)
        assert torch.equal(got["input_ids"], ids), type(tok).__name__
        assert torch.equal(got["attention_mask"], mask), type(tok).__name__
    # the same strings through transformers' own call differ: it closes every sequence with [SEP]
    plain = transformers_one(TRICKY, padding="max_length", truncation=True, max_length=40, return_tensors="pt")
    assert not torch.equal(plain["input_ids"], ids)


def test_text_path_is_bert_cls_then_text_proj(make_critic, bert_tokenizer_dir):
    critic = make_critic("internvideo2")
    prompts = ["a cat runs on the beach", "the red car", "The dog, the CAT."]
    ids, mask = official_tokens(OfficialBertTokenizer.from_pretrained(bert_tokenizer_dir), prompts)
    with torch.no_grad():
        bert = critic.model.text_encoder.bert
        assert len(bert.encoder.layer) == INTERNVIDEO2_SIZES["tiny"].text["num_hidden_layers"]
        cls = bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        ref = F.normalize(critic.model.text_proj(cls), dim=-1)
    torch.testing.assert_close(critic.embed_text(prompts), ref)


def test_the_official_tokenizer_object_gives_the_same_embeddings(tmp_path, bert_tokenizer_dir):
    path, _ = write_official("internvideo2", tmp_path)
    prompts = ["a cat runs on the beach", "THE RED CAR drives slowly"]
    embs = [load_critic("internvideo2", checkpoint=path, size="tiny", tokenizer=tok).embed_text(prompts)
            for tok in (bert_tokenizer_dir, OfficialBertTokenizer.from_pretrained(bert_tokenizer_dir))]
    assert torch.equal(embs[0], embs[1])


def test_tokenizer_is_required(tmp_path):
    from vdistill.critics import load_critic

    with pytest.raises(UserError, match="tokenizer="):
        load_critic("internvideo2", size="tiny")
    with pytest.raises(UserError, match=f"tokenizer folder not found: '{tmp_path / 'bert'}'"):
        load_critic("internvideo2", size="tiny", tokenizer=tmp_path / "bert")
