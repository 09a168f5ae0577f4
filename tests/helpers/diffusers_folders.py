"""Tiny random teachers saved in the official diffusers folder layout (built once per session, offline).

The networks keep the real classes and the real down-sampling structure (8x spatial VAEs, Wan's 4x temporal
compression) with a few channels each, so the backbones see the same config keys as the released models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

WORDS = "a an the cat dog red blue ball runs jumps on over grass sky".split()


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single letters (vocab.json + merges.txt are all ``CLIPTokenizer`` needs)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(folder))
    return tok


def t5_tokenizer(folder: Path):
    """A word-level tokenizer with T5's conventions (pad id 0, ``</s>`` appended), loadable by AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", *WORDS]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(str(folder))
    return tok


@pytest.fixture(scope="session")
def modelscope_dir(tmp_path_factory) -> Path:
    """``unet/ vae/ text_encoder/ tokenizer/ scheduler/`` of a tiny random ModelScope T2V."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("modelscope")
    torch.manual_seed(0)
    UNet3DConditionModel(
        in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=32,
    ).save_pretrained(root / "vae")
    tok = clip_tokenizer(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )).save_pretrained(root / "text_encoder")
    _write_json(root / "scheduler" / "scheduler_config.json", {
        "_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
        "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False, "steps_offset": 1,
    })
    _write_json(root / "model_index.json", {"_class_name": "TextToVideoSDPipeline"})
    return root


WAN_LATENTS_MEAN = [0.5, -0.25, 0.1, 1.0]
WAN_LATENTS_STD = [2.0, 1.5, 0.5, 3.0]


@pytest.fixture(scope="session")
def wan_dir(tmp_path_factory) -> Path:
    """``transformer/ vae/ text_encoder/ tokenizer/ scheduler/`` of a tiny random Wan2.1 T2V."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("wan")
    torch.manual_seed(0)
    WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=64,
    ).save_pretrained(root / "transformer")
    AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=WAN_LATENTS_MEAN, latents_std=WAN_LATENTS_STD,
    ).save_pretrained(root / "vae")
    tok = t5_tokenizer(root / "tokenizer")
    UMT5EncoderModel(UMT5Config(
        vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    )).save_pretrained(root / "text_encoder")
    _write_json(root / "scheduler" / "scheduler_config.json", {
        "_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "prediction_type": "flow_prediction",
        "use_flow_sigmas": True, "num_train_timesteps": 1000,
    })
    _write_json(root / "model_index.json", {"_class_name": "WanPipeline"})
    return root


def _save_pipeline(pipeline_class: type, parts: Path, root: Path, classes: dict[str, type]) -> Path:
    """Load each part of ``parts`` with its class in ``classes`` into ``pipeline_class`` and write it with the
    pipeline's own ``save_pretrained`` (``model_index.json`` naming every component's library and class, as a hub
    snapshot has it); the scheduler comes from the parts' ``scheduler_config.json``."""
    from vdistill.backbones.diffusers_io import read_scheduler_config

    components = {name: cls.from_pretrained(parts / name) for name, cls in classes.items() if name != "scheduler"}
    components["scheduler"] = classes["scheduler"].from_config(read_scheduler_config(parts))
    pipeline_class(**components).save_pretrained(str(root))
    return root


@pytest.fixture(scope="session")
def wan_pipeline_dir(wan_dir, tmp_path_factory) -> Path:
    """The tiny Wan2.1 written by ``WanPipeline.save_pretrained`` (its scheduler: the released UniPC config)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    return _save_pipeline(WanPipeline, wan_dir, tmp_path_factory.mktemp("wan_pipeline"), {
        "transformer": WanTransformer3DModel, "vae": AutoencoderKLWan, "text_encoder": UMT5EncoderModel,
        "tokenizer": AutoTokenizer, "scheduler": UniPCMultistepScheduler})


@pytest.fixture(scope="session")
def modelscope_pipeline_dir(modelscope_dir, tmp_path_factory) -> Path:
    """The tiny ModelScope T2V written by ``TextToVideoSDPipeline.save_pretrained`` (DDIM, as released)."""
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    return _save_pipeline(TextToVideoSDPipeline, modelscope_dir, tmp_path_factory.mktemp("modelscope_pipeline"), {
        "unet": UNet3DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
        "tokenizer": AutoTokenizer, "scheduler": DDIMScheduler})


def llama_tokenizer():
    """A word-level tokenizer with Llama 3's special tokens (``<|begin_of_text|>`` prepended), SentencePiece-style
    word boundaries and ``\\n\\n`` as one token, so that HunyuanVideo's prompt template ends at token 95 as with
    the real one (the pipeline's ``crop_start``)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    vocab = {w: i for i, w in enumerate([*specials, *(f"\u2581{w}" for w in WORDS)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.add_special_tokens(specials)
    tk.add_tokens([AddedToken("\n\n", normalized=False)])
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation("isolated"),
                                                pre_tokenizers.Digits(individual_digits=True)])
    tk.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="session")
def hunyuan_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny random HunyuanVideo T2V written by ``HunyuanVideoPipeline.save_pretrained`` (Llama + CLIP text, the
    real 8x / 4x VAE structure, guidance embedding on, FlowMatchEuler with the released shift 7.0)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    root = tmp_path_factory.mktemp("hunyuan_pipeline")
    torch.manual_seed(0)
    tok = llama_tokenizer()
    tok_2 = clip_tokenizer(tmp_path_factory.mktemp("hunyuan_clip_tokenizer"))
    HunyuanVideoPipeline(
        transformer=HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
            text_embed_dim=16, pooled_projection_dim=32, rope_axes_dim=(4, 4, 4), guidance_embeds=True),
        vae=AutoencoderKLHunyuanVideo(
            latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4),
        text_encoder=LlamaModel(LlamaConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)),
        tokenizer=tok,
        text_encoder_2=CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok_2), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=tok_2.bos_token_id, eos_token_id=tok_2.eos_token_id,
            pad_token_id=tok_2.pad_token_id)),
        tokenizer_2=tok_2,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    ).save_pretrained(str(root))
    return root
