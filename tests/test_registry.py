"""The registry: an import-free table of every component and critic that matches what the package defines; `vdistill
list` and `--kind`; short names of every family in YAML; `vdistill --help` without Lightning."""

from __future__ import annotations

import inspect
import subprocess
import sys

import yaml
from cli_helpers import run_cli

from vdistill import registry


def test_the_table_lists_every_component():
    """The import-free table matches the component classes the package really defines."""
    registry.import_all()
    found = {}
    for kind in registry.KINDS:
        stack = [registry.base_class(kind)]  # a base of vdistill's own is a component when it is concrete
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            if cls.__module__.startswith("vdistill.") and not inspect.isabstract(cls):
                found[cls.__name__] = (kind, cls.__module__)
    assert found == registry.COMPONENTS


def test_the_table_lists_every_critic():
    from vdistill.critics import CRITICS

    assert sorted(registry.CRITICS) == sorted(CRITICS)
    for name, (module, _) in registry.CRITICS.items():
        assert CRITICS[name].__module__ == module


def test_list_filters_by_kind(capsys):
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    for name in [*registry.COMPONENTS, *registry.CRITICS]:
        assert f"  {name} " in out
    code, out, _ = run_cli(["list", "--kind", "backbones"], capsys)
    assert code == 0 and out.splitlines()[0] == "backbones (teachers / students):"
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"ToyBackbone", "WanBackbone", "ModelScopeBackbone",
                                                                  "HunyuanVideoBackbone"}
    code, out, _ = run_cli(["list", "--kind", "critics"], capsys)
    assert {line.split()[0] for line in out.splitlines()[1:]} == set(registry.CRITICS)
    code, _, err = run_cli(["list", "--kind", "no_such_kind"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "vdistill: error: argument --kind: invalid choice: 'no_such_kind'" in err
    assert all(f"'{kind}'" in err for kind in [*registry.KINDS, "critics"])


def test_help_and_list_do_not_import_lightning():
    """`--help` and `list` (every kind, with the components' summaries) import none of the heavy libraries; the
    commands that do not train (sample, synth, preprocess, bench, export, profile) do not import Lightning."""
    code = ("import sys; from vdistill.cli import main; main(['--help']); main(['list']); "
            "print(sorted(m for m in ('lightning', 'diffusers', 'transformers', 'open_clip') if m in sys.modules)); "
            "import vdistill.commands.sample, vdistill.commands.synth, vdistill.commands.preprocess, "
            "vdistill.commands.bench, vdistill.commands.export, vdistill.commands.profile, "
            "vdistill.commands.critic_report; "
            "print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-2:] == ["[]", "False"]


def test_short_names_of_every_backbone_family_resolve(capsys, tmp_path):
    for name in ("WanBackbone", "ModelScopeBackbone"):
        cfg = {"model": {"class_path": "TeacherTraining",
                         "init_args": {"backbone": {"class_path": name, "init_args": {"path": "/models/x"}}}},
               "data": {"class_path": "ToyVideos"}}
        path = tmp_path / "teacher.yaml"
        path.write_text(yaml.safe_dump(cfg))
        code, out, err = run_cli(["fit", "--config", str(path), "--print_config"], capsys)
        assert code == 0, err
        printed = yaml.safe_load(out)["model"]["init_args"]["backbone"]
        assert printed["class_path"] == registry.dotted(name) and printed["init_args"]["path"] == "/models/x"


def test_lookup_takes_our_own_reexports_only():
    """jsonargparse prints a re-exported class by its package (``vdistill.objectives.TrajectoryGuidance``)."""
    assert registry.lookup("vdistill.objectives.TrajectoryGuidance") == "TrajectoryGuidance"
    assert registry.lookup("vdistill.objectives.trajectory.TrajectoryGuidance") == "TrajectoryGuidance"
    # configs and checkpoints written before the layout settled name the former homes
    assert registry.lookup("vdistill.synth.dataset.TrajectoryData") == "TrajectoryData"
    assert registry.lookup("vdistill.modules.discriminator.Discriminator") == "Discriminator"
    assert registry.lookup("vdistill.modules.discriminator.TrajectoryData") is None
    for path in ("os.TrajectoryGuidance", "vdistill.TrajectoryGuidance", "vdistill.obj.TrajectoryGuidance",
                 "vdistill.objectives.consistency.TrajectoryGuidance", "torch.nn.Linear"):
        assert registry.lookup(path) is None, path
