"""A reduced Wan2.1 text-to-video pipeline with random weights, written as ``WanPipeline.save_pretrained`` writes a
hub snapshot: the real diffusers classes (``WanTransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel``) at
a small width, so that ``vdistill`` loads it as any Wan2.1 folder and the bare diffusers code runs the same networks.

The transformer is the part that is timed: a few blocks of Wan's DiT at width ``heads x 128`` (Wan2.1-1.3B: 30
blocks, 12 heads of 128, FFN 8960), so that a training step on a short clip (17 frames of 128 x 128: 5 x 16 x 16
latents, 320 tokens) is dominated by matrix products, not by Python. The VAE and text encoder are tiny (they run
once per prompt or clip, the same way on both sides of a comparison).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

#: the toy world's caption words (and the empty prompt's special tokens): the word-level tokenizer's vocabulary
WORDS = ("a an the red green blue yellow circle square triangle star moving left right up down grows shrinks "
         "cat dog ball runs jumps on over grass sky").split()


@dataclass(frozen=True)
class WanSize:
    """The reduced Wan: ``layers`` DiT blocks of ``heads`` x ``head_dim`` channels, FFN ``ffn_mult`` x width; clips
    of ``frames`` x ``size`` x ``size`` pixels (``1 + 4k`` frames, ``size`` a multiple of 16)."""

    layers: int = 4
    heads: int = 2
    head_dim: int = 128
    ffn_mult: int = 4
    text_dim: int = 64
    frames: int = 17
    size: int = 128

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    def tokens(self) -> int:
        """Transformer tokens per clip: latent frames x (size / 16)^2 (VAE 8x, patch 2x2)."""
        return ((self.frames - 1) // 4 + 1) * (self.size // 16) ** 2


#: the benchmarks' reduced Wan and the one of their quick (test) mode
BENCH = WanSize()
QUICK = WanSize(layers=1, heads=2, head_dim=16, ffn_mult=2, text_dim=16, frames=5, size=32)


def _tokenizer():
    """A word-level tokenizer with T5's conventions (pad id 0, ``</s>`` appended), loadable by ``AutoTokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", *dict.fromkeys(WORDS)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                  model_max_length=10**6)
    return tok


def write_pipeline(root: str | Path, size: WanSize = BENCH, seed: int = 0) -> Path:
    """Write the reduced Wan2.1 T2V pipeline folder ``root`` (random weights, seeded); kept when it exists with the
    same size (``bench_size.json``)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    root = Path(root)
    stamp = root / "bench_size.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == asdict(size):
        return root
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=size.heads, attention_head_dim=size.head_dim, in_channels=16,
        out_channels=16, text_dim=size.text_dim, freq_dim=256, ffn_dim=size.ffn_mult * size.dim,
        num_layers=size.layers, rope_max_seq_len=1024)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tok), d_model=size.text_dim, d_kv=16, d_ff=2 * size.text_dim, num_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    # Wan2.1's released scheduler: UniPC on flow sigmas, shift 3.0 (480p)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    WanPipeline(tokenizer=tok, text_encoder=text_encoder, transformer=transformer, vae=vae,
                scheduler=scheduler).save_pretrained(str(root))
    stamp.write_text(json.dumps(asdict(size)))
    return root


def transformer_parameters(root: str | Path) -> int:
    """Parameters of the folder's transformer (read from its config by building it on the meta device)."""
    from diffusers import WanTransformer3DModel

    config = WanTransformer3DModel.load_config(str(Path(root) / "transformer"))
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


def wan_prompts(n: int) -> list[str]:
    """``n`` prompts in the tokenizer's words that are not toy captions (so ``vdistill sample`` scores no ToyBench,
    as for any real teacher's prompts)."""
    import itertools

    combos = itertools.product(("red", "blue", "green", "yellow"), ("cat", "dog", "ball"), ("runs", "jumps"),
                               ("on the grass", "over the sky"))
    return [f"a {c} {s} {v} {p}" for c, s, v, p in itertools.islice(itertools.cycle(combos), n)]


def toy_prompts(n: int) -> list[str]:
    """The first ``n`` toy captions (repeated when ``n`` > 48)."""
    from vdistill.world.captions import toy_prompts as all_prompts

    prompts = all_prompts()
    return [prompts[i % len(prompts)] for i in range(n)]


def trajectory_set(model, out: str | Path, count: int, steps: int, key_indices: tuple[int, ...], size: WanSize,
                   batch_size: int = 8) -> Path:
    """``count`` trajectories of the teacher ``model`` written by vdistill's own ``synthesize`` (float32 shards;
    resumed, so a second call with the same settings reads the set already there)."""
    from vdistill.synth import synthesize

    synthesize(model, toy_prompts(count), out, key_indices=key_indices, steps=steps, dtype="float32",
               batch_size=batch_size, num_frames=size.frames, height=size.size, width=size.size, progress=False)
    return Path(out)


def latent_clips(model, out: str | Path, count: int, size: WanSize) -> Path:
    """A ``vdistill preprocess`` cache (float32) of ``count`` rendered toy clips of ``size.frames`` x ``size.size``
    px, written as mp4s with a captions file first: real clips for consistency distillation, encoded once."""
    import numpy as np

    from vdistill.data.decode import ClipSpec
    from vdistill.data.videos import VideoClipDataset
    from vdistill.preprocess.writer import preprocess
    from vdistill.sampling.video_io import write_mp4
    from vdistill.world.captions import all_captions
    from vdistill.world.render import WorldConfig, render

    out = Path(out)
    videos = out.with_name(out.name + "_mp4")
    videos.mkdir(parents=True, exist_ok=True)
    world, captions, rows = WorldConfig(num_frames=size.frames, size=size.size), all_captions(), ["path,caption"]
    for i in range(count):
        rng = np.random.default_rng([0, i])
        caption = captions[i % len(captions)]
        path = videos / f"clip{i:03d}.mp4"
        if not path.is_file():
            write_mp4(path, render(caption, rng, world), fps=16, upscale=1)
        rows.append(f"{path.name},{caption.text}")
    (videos / "captions.csv").write_text("\n".join(rows) + "\n")
    clips = VideoClipDataset(videos / "captions.csv", None, ClipSpec(size.frames, size.size, size.size, fps=16),
                             random_start=False)
    preprocess(model, clips, out, shard_size=64, batch_size=4, dtype="float32", workers=0, progress=False)
    return out


def bench_data(work: str | Path, size: WanSize, quick: bool) -> dict:
    """The benchmarks' reduced Wan folder under ``work`` with a trajectory set (16 trajectories, key points 0, 2, 4
    of 4 Euler steps with CFG: a 2-step student; 4 of 0, 1, 2 in quick mode) and a latent-clip cache of as many
    clips: ``{"wan", "trajectories", "clips", "keys"}``."""
    from vdistill.backbones.io import load_backbone

    work = Path(work)
    wan = write_pipeline(work / "wan", size)
    teacher = load_backbone(str(wan))
    count, keys = (4, (0, 1, 2)) if quick else (16, (0, 2, 4))
    return {"wan": wan, "keys": keys,
            "trajectories": trajectory_set(teacher, work / "trajectories", count, keys[-1], keys, size),
            "clips": latent_clips(teacher, work / "clips", count, size)}
