"""The fragments of the top-level ``callbacks/`` folder compose with a recipe through the real CLI: each appends its
callbacks (``callbacks+:`` inside a config file) after the recipe's own, which stay as they were, and a 2-step run
shows their effects."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from cli_helpers import run_cli

from vdistill.backbones.io import load_backbone
from vdistill.cli import main

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "experiments/toy/accvideo/accvideo.yaml"
FRAGMENTS = sorted((ROOT / "callbacks").glob("*.yaml"))


def written_callbacks(path: Path) -> list[dict]:
    """The callbacks a config file sets (a recipe's ``callbacks:``) or appends (a fragment's ``callbacks+:``)."""
    trainer = yaml.safe_load(path.read_text())["trainer"]
    listed = trainer.get("callbacks", trainer.get("callbacks+"))
    return [listed] if isinstance(listed, dict) else listed


def is_written(printed: dict, written: dict) -> bool:
    """``printed`` (the parsed callback: full class path, every argument) is ``written`` (a file's entry: a short or
    full class name, some arguments)."""
    return (printed["class_path"].rsplit(".", 1)[-1] == written["class_path"].rsplit(".", 1)[-1]
            and all(printed["init_args"][k] == v for k, v in (written.get("init_args") or {}).items()))


def test_every_fragment_appends_its_callbacks_after_the_recipes(capsys):
    assert FRAGMENTS
    configs = [arg for f in FRAGMENTS for arg in ("--config", str(f))]
    code, out, err = run_cli(["fit", "--config", str(RECIPE), *configs, "--print_config"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)["trainer"]["callbacks"]
    expected = [c for path in [RECIPE, *FRAGMENTS] for c in written_callbacks(path)]
    assert len(printed) == len(expected) and all(len(written_callbacks(f)) >= 1 for f in FRAGMENTS)
    for got, want in zip(printed, expected):
        assert is_written(got, want), (got, want)


def test_fragments_take_effect_in_a_two_step_run(toy, tmp_path, monkeypatch):
    """EMA: the export holds the averaged weights; VideoSamples: a grid at the end, in TensorBoard too;
    LearningRateMonitor and ThroughputMemory: their curves."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    monkeypatch.chdir(tmp_path)  # the recipe writes under runs/ of the working directory
    fragments = [a for f in ("ema", "video_samples", "lr_monitor", "throughput")
                 for a in ("--config", str(ROOT / f"callbacks/{f}.yaml"))]
    main(["fit", "--config", str(RECIPE), *fragments,
          f"--model.init_args.teacher={toy / 'teacher'}", f"--data.init_args.root={toy / 'data'}",
          "--data.init_args.batch_size=2", "--trainer.max_steps=2", "--trainer.log_every_n_steps=1",
          "--trainer.enable_progress_bar=false"])
    recipe = yaml.safe_load(RECIPE.read_text())["trainer"]
    dirs = {c["class_path"]: tmp_path / c["init_args"]["dirpath"] for c in recipe["callbacks"]}

    ckpt = torch.load(dirs["ModelCheckpoint"] / "last.ckpt", map_location="cpu", weights_only=True)
    ema = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMA"))
    assert ema["num_updates"] > 0
    exported = dict(load_backbone(dirs["ExportBackbone"]).named_parameters())
    for name, avg in ema["averaged"].items():
        torch.testing.assert_close(exported[name], avg, rtol=0, atol=0)

    log_dir = tmp_path / recipe["default_root_dir"] / "lightning_logs" / "version_0"
    assert (log_dir / "samples/step_000002/grid.gif").is_file()
    acc = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0})
    acc.Reload()
    assert [e.step for e in acc.Images("samples/grid")] == [2]
    scalars = acc.Tags()["scalars"]
    assert any(t.startswith("lr-") for t in scalars) and any(t.startswith("perf/peak_") for t in scalars), scalars
