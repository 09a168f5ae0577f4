"""callbacks/adapter_checkpoints.yaml through the CLI: a LoRA student's periodic checkpoints are adapter-only, load
as a merged student, and ``--ckpt_path last`` resumes from the run folder after a restart."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from vdistill.backbones.io import load_backbone
from vdistill.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_adapter_checkpoints_fragment_and_resume(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {  # a LoRA recipe without checkpoint callbacks of its own
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "default_root_dir": "run", "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"class_path": "Distillation", "init_args": {
            "teacher": str(toy / "teacher"), "student": {"mode": "lora", "lora_rank": 4}, "lr": 1e-2,
            "objectives": [{"class_path": "TrajectoryGuidance"}]}},
        "data": {"class_path": "TrajectoryData", "init_args": {"root": str(toy / "data"), "batch_size": 2}},
    }
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(base))
    args = ["fit", "--config", "lora.yaml", "--config", str(ROOT / "callbacks/adapter_checkpoints.yaml"),
            "--trainer.callbacks.every_n_train_steps=1"]  # edits the callback the last fragment appended
    main([*args, "--trainer.max_steps=2"])

    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step_000001.ckpt", "step_000002.ckpt"]
    saved = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    student_keys = [k for k in saved["state_dict"] if k.startswith("student.")]
    assert student_keys and all("lora_" in k for k in student_keys)  # adapters only
    assert not any(k.startswith("teacher.") for k in saved["state_dict"])
    assert saved["vdistill_teacher"] == str((toy / "teacher").resolve())
    student = load_backbone(folder / "step_000002.ckpt")  # merged onto the teacher's weights
    assert student.defaults.steps == 2 and not any("lora_" in k for k in student.state_dict())

    first = (folder / "step_000001.ckpt").stat().st_mtime_ns
    main([*args, "--trainer.max_steps=3", "--ckpt_path=last"])  # a new process would find the same folder
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step_000001.ckpt", "step_000002.ckpt",
                                                        "step_000003.ckpt"]
    assert (folder / "step_000001.ckpt").stat().st_mtime_ns == first  # resumed at step 2, not restarted
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3


def test_a_checkpoint_write_that_fails_keeps_the_previous_one(toy, tmp_path, monkeypatch):
    """A full disk (or a kill) in the middle of writing step 2's checkpoint: last.ckpt is still step 1's, whole."""
    import errno

    import lightning as L
    import pytest

    monkeypatch.chdir(tmp_path)
    cfg = {"seed_everything": 0,
           "trainer": {"accelerator": "cpu", "default_root_dir": "run", "logger": False, "max_steps": 3,
                       "enable_progress_bar": False, "enable_model_summary": False,
                       "callbacks": [{"class_path": "PeriodicCheckpoints",
                                      "init_args": {"every_n_train_steps": 1, "save_top_k": 0}}]},
           "model": {"class_path": "Distillation", "init_args": {
               "teacher": str(toy / "teacher"), "objectives": [{"class_path": "TrajectoryGuidance"}]}},
           "data": {"class_path": "TrajectoryData", "init_args": {"root": str(toy / "data"), "batch_size": 2}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    save = L.Trainer.save_checkpoint

    def half_then_full_disk(self, filepath, weights_only=False, storage_options=None):
        if self.global_step < 2:
            return save(self, filepath, weights_only, storage_options)
        Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")  # what an interrupted copy leaves
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    monkeypatch.setattr(L.Trainer, "save_checkpoint", half_then_full_disk)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", "run.yaml"])
    assert exc.value.code == 2
    folder = tmp_path / "run" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]  # no partial file left behind either
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 1


def test_last_is_found_in_the_run_folder_when_a_logger_starts_a_new_version(toy, tmp_path):
    """With a logger, Lightning's own folder is ``version_N/checkpoints``, and a restarted run gets version N + 1:
    ``ckpt_path="last"`` must still find the run folder's ``last.ckpt``."""
    import lightning as L
    from callback_helpers import distillation
    from lightning.pytorch.loggers import CSVLogger

    from vdistill.callbacks import PeriodicCheckpoints
    from vdistill.data.trajectories import TrajectoryData

    def run(max_steps, ckpt_path=None):
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, default_root_dir=str(tmp_path),
                            logger=CSVLogger(str(tmp_path / "logs")), enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[PeriodicCheckpoints(every_n_train_steps=1)])
        trainer.fit(distillation(toy), datamodule=TrajectoryData(str(toy / "data"), batch_size=2, shuffle=False),
                    ckpt_path=ckpt_path)
        return trainer

    run(2)
    folder = tmp_path / "checkpoints"
    first = (folder / "step_000001.ckpt").stat().st_mtime_ns
    resumed = run(3, ckpt_path="last")
    assert resumed.logger.version == 1  # a new version folder, whose checkpoints/ would hold nothing
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step_000001.ckpt", "step_000002.ckpt",
                                                        "step_000003.ckpt"]
    assert (folder / "step_000001.ckpt").stat().st_mtime_ns == first  # resumed at step 2, not restarted
