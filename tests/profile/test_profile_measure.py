"""``vdistill profile --measure`` on the CPU (``--measure-device cpu``) at tiny sizes: the measured training step and
the sampled videos of teacher and student, every figure reported; bad options are one-line errors."""

import json
import math
from pathlib import Path

import pytest
import torch

from vdistill.cli import main

ROOT = Path(__file__).resolve().parents[2]
MEASURE = ["--measure", "--measure-device", "cpu", "--measure-warmup", "1", "--measure-steps", "1"]
NOT_ON_CPU = {"peak_tflops", "mfu", "peak_bytes"}  # no allocator statistics and no known peak for a CPU


@pytest.fixture(scope="module")
def tiny_wan_configs(tmp_path_factory) -> Path:
    """``<part>/config.json`` of a tiny Wan2.1 (no weights): what ``--teacher-config`` reads."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config

    root = tmp_path_factory.mktemp("tiny_wan_configs")
    WanTransformer3DModel.from_config(dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=64)).save_config(root / "transformer")
    AutoencoderKLWan.from_config(dict(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.5, -0.25, 0.1, 1.0], latents_std=[2.0, 1.5, 0.5, 3.0])).save_config(root / "vae")
    (root / "text_encoder").mkdir()
    UMT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0,
               eos_token_id=1, decoder_start_token_id=0).to_json_file(root / "text_encoder" / "config.json")
    return root


def measured(argv: list[str], tmp_path: Path, capsys) -> tuple[dict, str]:
    out = tmp_path / "profile.json"
    main(["profile", *argv, *MEASURE, "--json", str(out)])
    return json.loads(out.read_text()), capsys.readouterr().out


def positive_and_finite(figures: dict, skip: set[str] = frozenset()) -> None:
    for key, value in figures.items():
        if key in skip or isinstance(value, str):
            continue
        if isinstance(value, dict):
            positive_and_finite(value)
        else:
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def test_wan_recipe_measures_step_and_both_videos(tiny_wan_configs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = ["--config", "experiments/wan/accvideo_1.3b.yaml", "--teacher-config", str(tiny_wan_configs),
            "--frames", "5", "--height", "32", "--width", "32"]
    data, table = measured(argv, tmp_path, capsys)
    m = data["measured"]
    assert set(m) == {"device", "step_s", "tflops", "peak_tflops", "mfu", "peak_bytes", "warmup_steps", "timed_steps",
                      "videos"}
    assert m["device"] == "cpu" and all(m[k] is None for k in NOT_ON_CPU)
    positive_and_finite(m, NOT_ON_CPU)
    videos = m["videos"]
    assert set(videos) == {"warmup_denoising_steps", "teacher", "student", "speedup"}
    for who in ("teacher", "student"):
        assert set(videos[who]) == {"seconds", "steps", "cfg", "tflops"}
        assert videos[who]["steps"] == data["video"][who]["steps"]  # the sampler ran the steps the FLOPs counted
    assert videos["teacher"]["cfg"] > 1 and videos["student"]["cfg"] == 1  # CFG for the teacher only
    assert "speed-up" in table and "measured (limit" in table and "teacher  50 steps, CFG 5" in table


def test_consistency_student_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    data, table = measured(["--config", "experiments/toy/turbo/turbo.yaml", "--batch", "2",
                            "--measure-videos", "student"], tmp_path, capsys)
    videos = data["measured"]["videos"]
    assert set(videos) == {"warmup_denoising_steps", "student"}  # no teacher video, so no measured speed-up
    positive_and_finite(videos)
    assert videos["student"]["steps"] == data["video"]["student"]["steps"] == 4  # the recipe's sampling_steps
    assert "student   4 steps" in table and "measured (limit" not in table


@pytest.mark.parametrize(("flag", "value"), [("--measure-videos", "teacher"), ("--measure-steps", "0"),
                                             ("--measure-warmup", "-1"), ("--measure-device", "tpu")])
def test_bad_measure_option_is_one_line(flag, value, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as err:
        main(["profile", "--config", "experiments/toy/turbo/turbo.yaml", "--measure", flag, value])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert msg.count("\n") == 0 and flag in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses only without a GPU")
def test_measure_without_gpu_is_one_line(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as err:
        main(["profile", "--config", "experiments/toy/turbo/turbo.yaml", "--measure"])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert msg.count("\n") == 0 and "GPU" in msg
