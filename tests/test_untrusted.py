"""Files from elsewhere never run code: checkpoints, adapter-only checkpoints, ``--ckpt_path`` hyper-parameters and
exported folders that name a function are refused in one line, before anything is imported or called."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import run_cli

from vdistill import config
from vdistill.backbones.io import SHIPPED
from vdistill.errors import UserError


@pytest.fixture(autouse=True)
def no_trusted_classes():
    """The user-named classes are process-wide: each test starts without any."""
    before = set(config._TRUSTED)
    config._TRUSTED.clear()
    yield
    config._TRUSTED.clear()
    config._TRUSTED.update(before)


def payload(marker: Path) -> dict:
    return {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}


class Pickled:
    """A pickle that runs ``touch MARKER`` when unpickled (what ``weights_only=False`` would execute)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def toy_record() -> dict:
    return yaml.safe_load((SHIPPED["toy-flow"] / "backbone.yaml").read_text())


@pytest.fixture
def evil(tmp_path) -> dict[str, Path]:
    """Files that would create ``marker`` if their config were built blindly."""
    marker = tmp_path / "PWNED"
    files = {"marker": marker, "ckpt": tmp_path / "EVIL.ckpt", "folder": tmp_path / "evil_export",
             "adapter": tmp_path / "adapter.ckpt", "adapter_via_path": tmp_path / "adapter_via_path.ckpt",
             "pickle": tmp_path / "pickle.ckpt", "nested": tmp_path / "nested.ckpt"}
    torch.save({"vdistill_backbone": payload(marker), "state_dict": {}}, files["ckpt"])
    shutil.copytree(SHIPPED["toy-flow"], files["folder"])
    (files["folder"] / "backbone.yaml").write_text(yaml.safe_dump(payload(marker)))
    student = {**toy_record(), "lora": {"rank": 4, "alpha": None, "target_modules": None}}
    torch.save({"vdistill_backbone": student, "vdistill_teacher": payload(marker), "state_dict": {}},
               files["adapter"])
    torch.save({"vdistill_backbone": student, "vdistill_teacher": str(files["ckpt"]), "state_dict": {}},
               files["adapter_via_path"])
    torch.save({"vdistill_backbone": toy_record(), "state_dict": {"student.x": Pickled(marker)}}, files["pickle"])
    # a registered backbone whose schedule is the payload: nested records are checked too
    nested = toy_record()
    nested["init_args"]["schedule"] = payload(marker)
    torch.save({"vdistill_backbone": nested, "state_dict": {}}, files["nested"])
    return files


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vdistill: error: "), err
    return lines[0]


ENTRY_POINTS = {
    "sample checkpoint": (["sample", "--model", "{ckpt}", "--out", "{out}"], "ckpt", "'os.system'"),
    "export checkpoint": (["export", "--ckpt", "{ckpt}", "--out", "{out}"], "ckpt", "'os.system'"),
    "synth checkpoint": (["synth", "--model", "{ckpt}", "--out", "{out}"], "ckpt", "'os.system'"),
    "sample backbone.yaml": (["sample", "--model", "{folder}", "--out", "{out}"], "folder", "'os.system'"),
    "export backbone.yaml": (["export", "--ckpt", "{folder}", "--out", "{out}"], "folder", "'os.system'"),
    "synth backbone.yaml": (["synth", "--model", "{folder}", "--out", "{out}"], "folder", "'os.system'"),
    "export adapter-only, teacher record": (["export", "--ckpt", "{adapter}", "--out", "{out}"], "adapter",
                                            "'os.system'"),
    "sample adapter-only, teacher path": (["sample", "--model", "{adapter_via_path}", "--out", "{out}"], "ckpt",
                                          "'os.system'"),
    "sample nested record": (["sample", "--model", "{nested}", "--out", "{out}"], "nested", "'os.system'"),
    "sample pickle payload": (["sample", "--model", "{pickle}", "--out", "{out}"], "pickle",
                              "holds objects other than tensors"),
}


@pytest.mark.parametrize("case", list(ENTRY_POINTS))
def test_a_file_naming_a_function_is_refused_before_it_runs(case, evil, tmp_path, capsys):
    args, named, message = ENTRY_POINTS[case]
    argv = [a.format(out=tmp_path / "out", **evil) for a in args]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    line = one_error_line(err)
    assert str(evil[named].name) in line and message in line, line
    assert not evil["marker"].exists()
    assert not (tmp_path / "out").exists()


def distill_config(tmp_path: Path, **model) -> Path:
    cfg = {"trainer": {"accelerator": "cpu", "max_steps": 1, "logger": False,
                       "default_root_dir": str(tmp_path / "run")},
           "model": {"class_path": "Distillation",
                     "init_args": {"teacher": "toy-ddpm", "objectives": [{"class_path": "ConsistencyDistillation"}],
                                   **model}},
           "data": {"class_path": "ToyVideos", "init_args": {"batch_size": 2}}}
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_teacher_checkpoint_on_the_command_line_is_checked(evil, tmp_path, capsys):
    code, _, err = run_cli(["fit", "--config", str(distill_config(tmp_path)), "--model.init_args.teacher",
                            str(evil["ckpt"])], capsys)
    assert code == 2 and "'os.system'" in one_error_line(err)
    assert not evil["marker"].exists()


def tampered_hparams(evil: dict[str, Path], tmp_path: Path) -> dict[str, dict]:
    critic_file = tmp_path / "critic.pt"
    torch.save({"state_dict": {"w": Pickled(evil["marker"])}}, critic_file)
    base = {"_class_path": "vdistill.modules.distill.Distillation", "teacher": "toy-flow",
            "objectives": [{"class_path": "vdistill.objectives.trajectory.TrajectoryGuidance"}]}
    return {
        "teacher checkpoint": ({**base, "teacher": str(evil["ckpt"])}, "'os.system'"),
        "module class": ({**base, "_class_path": "this.Module"}, "'this.Module'"),
        "nested objective": ({**base, "objectives": [{"class_path": "this.Objective"}]}, "'this.Objective'"),
        "unsafe critic load": ({**base, "critics": {"viclip": {"checkpoint": str(critic_file), "size": "tiny",
                                                               "trust_checkpoint": True}}}, "trust_checkpoint"),
    }


@pytest.mark.parametrize("case", ["teacher checkpoint", "module class", "nested objective", "unsafe critic load"])
def test_ckpt_path_with_tampered_hyper_parameters_is_refused(case, evil, tmp_path, capsys):
    hparams, message = tampered_hparams(evil, tmp_path)[case]
    ckpt = tmp_path / "resume.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": {}}, ckpt)
    sys.modules.pop("this", None)  # `import this` prints the Zen of Python: proof that nothing was imported
    code, out, err = run_cli(["fit", "--config", str(distill_config(tmp_path)), "--ckpt_path", str(ckpt)], capsys)
    assert code == 2
    line = one_error_line(err)
    assert message in line and (ckpt.name in line or "EVIL.ckpt" in line), line
    assert not evil["marker"].exists()
    assert "this" not in sys.modules and "Beautiful is better" not in out


def test_ckpt_path_holding_a_pickle_payload_is_refused(evil, tmp_path, capsys):
    code, _, err = run_cli(["fit", "--config", str(distill_config(tmp_path)), "--ckpt_path", str(evil["pickle"])],
                           capsys)
    assert code == 2 and "holds objects other than tensors" in one_error_line(err)
    assert not evil["marker"].exists()


def test_the_trainer_loads_ckpt_path_weights_only(tmp_path, monkeypatch, capsys):
    """Lightning's default for a remote (http) --ckpt_path is weights_only=False; ours is True everywhere."""
    import lightning as L

    seen = {}
    monkeypatch.setattr(L.Trainer, "_fit_impl", lambda self, *args: seen.update(ckpt_path=args[-2],
                                                                               weights_only=args[-1]))
    ckpt = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    code, _, err = run_cli(["fit", "--config", str(distill_config(tmp_path)), "--ckpt_path", str(ckpt)], capsys)
    assert code == 0, err
    assert seen["ckpt_path"] == str(ckpt) and seen["weights_only"] is True


def test_the_users_own_class_paths_are_trusted(tmp_path, monkeypatch, capsys):
    """A checkpoint naming a class that the user's own config names loads; unnamed, it is refused unimported."""
    (tmp_path / "user_backbones.py").write_text(
        "from vdistill.backbones.toy import ToyBackbone\n\nclass MyToy(ToyBackbone):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_backbones", None)
    record = {**toy_record(), "class_path": "user_backbones.MyToy"}
    with pytest.raises(UserError, match=r"^ckpt names class 'user_backbones.MyToy', .*nothing was imported"):
        config.from_config(record, source="ckpt", kind="backbones")
    assert "user_backbones" not in sys.modules
    # the CLI trusts what the user's config names (the run stops at the bad max_steps, after parsing)
    cfg = distill_config(tmp_path, teacher={"class_path": "user_backbones.MyToy", "init_args": {}})
    code, _, err = run_cli(["fit", "--config", str(cfg), "--trainer.max_steps", "-5"], capsys)
    assert code == 2 and "trainer.max_steps is -5" in one_error_line(err)
    assert "user_backbones.MyToy" in config._TRUSTED
    model = config.from_config(record, source="ckpt", kind="backbones")
    assert type(model).__name__ == "MyToy"


def test_a_registered_class_of_the_wrong_kind_is_refused():
    record = {"class_path": "vdistill.callbacks.export.ExportBackbone", "init_args": {"dirpath": "x"}}
    with pytest.raises(UserError, match="where one of the backbones"):
        config.from_config(record, source="f", kind="backbones")


@pytest.fixture
def toy_export(tmp_path) -> Path:
    folder = tmp_path / "toy"
    shutil.copytree(SHIPPED["toy-flow"], folder)
    return folder


def test_a_truncated_or_mismatched_export_is_one_line(toy_export, tmp_path, capsys):
    weights = toy_export / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["sample", "--model", str(toy_export), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "truncated or corrupt" in one_error_line(err) and "model.safetensors" in err
    weights.write_bytes(data)
    record = toy_record()
    record["init_args"]["base_channels"] = 2 * record["init_args"]["base_channels"]
    (toy_export / "backbone.yaml").write_text(yaml.safe_dump(record))
    code, _, err = run_cli(["sample", "--model", str(toy_export), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "tensors of another shape" in one_error_line(err)


@pytest.mark.parametrize("bad, message", [
    ({"init_args": {}}, "no class_path"),
    ({"class_path": 5, "init_args": {}}, "class_path 5 is not a string"),
    ({"class_path": "ToyBackbone", "init_args": {"no_such_arg": 1}}, "cannot build ToyBackbone"),
    ({"class_path": "ToyBackbone", "init_args": [1]}, "must be {class_path, init_args"),
    ({"class_path": "ToyBackbone", "init_args": {}, "key_timesteps": "fast"}, "key_timesteps 'fast'"),
    ({"class_path": "ToyBackbone", "init_args": {}, "lora": {"rank": "4"}}, "lora"),
])
def test_a_malformed_backbone_yaml_is_one_line(bad, message, toy_export, tmp_path, capsys):
    (toy_export / "backbone.yaml").write_text(yaml.safe_dump(bad))
    code, _, err = run_cli(["sample", "--model", str(toy_export), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    line = one_error_line(err)
    assert message in line and "backbone.yaml" in line, line


def test_a_wrong_typed_config_value_names_its_key(tmp_path, capsys):
    code, _, err = run_cli(["fit", "--config", str(distill_config(tmp_path, lr="fast"))], capsys)
    assert code == 2
    assert one_error_line(err) == "vdistill: error: bad value for 'model.init_args.lr': expected a float, got 'fast'"


@pytest.mark.parametrize("key, value", [("max_steps", -5), ("max_epochs", -3), ("accumulate_grad_batches", 0)])
def test_bad_trainer_counts_are_one_line(key, value, tmp_path, capsys):
    code, _, err = run_cli(["fit", "--config", str(distill_config(tmp_path)), f"--trainer.{key}", str(value)],
                           capsys)
    assert code == 2 and f"trainer.{key} is {value}" in one_error_line(err)
    assert not (tmp_path / "run").exists()
