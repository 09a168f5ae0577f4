"""Fixtures: offline tiny tokenizers and tiny critics written in their OFFICIAL file layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from critic_files import BERT_WORDS, critic_options, write_official
from open_clip.tokenizer import bytes_to_unicode
from transformers import CLIPTokenizer

from vdistill.critics import load_critic


@pytest.fixture(scope="session")
def clip_processor_dir(tmp_path_factory) -> Path:
    """A laion-style CLIP tokenizer folder: byte-level characters only (514 tokens, no merges)."""
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path_factory.mktemp("clip_processor")
    CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bert_tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    return folder


@pytest.fixture
def make_critic(tmp_path, clip_processor_dir, bert_tokenizer_dir):
    """``make_critic(name, mutate=None, **options)``: write the official layout, load it back via load_critic."""

    def make(name: str, mutate=None, **options):
        path, _ = write_official(name, tmp_path, mutate)
        opts = {**critic_options(name, clip_processor_dir, bert_tokenizer_dir), **options}
        return load_critic(name, checkpoint=path, size="tiny", **opts)

    return make
