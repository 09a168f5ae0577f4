"""``compile: true``: the compiled denoisers give the eager losses, step after step (so the backward and the update
too), checkpoints hold the same names; ThroughputMemory leaves the steps that compiled out of its rates.

The fits compile with ``compile_backend: aot_eager`` (dynamo's graphs and AOTAutograd's joint forward / backward,
run without code generation): inductor's C++ build of even this tiny toy step takes minutes on a 2-core CPU."""

from __future__ import annotations

import types

import lightning as L
import pytest
import torch
from speed_helpers import fit

from vdistill.backbones.student import StudentConfig, make_student
from vdistill.callbacks import throughput
from vdistill.callbacks.throughput import ThroughputMemory
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import TrajectoryGuidance


class Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def run(toy_world, compile: bool, mode: str = "full", steps: int = 3):
    L.seed_everything(0)
    model = Distillation(str(toy_world / "teacher"), [TrajectoryGuidance()], lr=1e-2, compile=compile,
                         compile_backend="aot_eager", student=StudentConfig(mode=mode, lora_rank=4))
    losses, perf = Losses(), ThroughputMemory(window_size=2)
    fit(model, toy_world / "data", max_steps=steps, callbacks=[losses, perf], log_every_n_steps=1)
    return model, losses.losses, perf


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_compiled_fit_steps_give_the_eager_losses(toy_world, mode):
    eager, eager_losses, eager_perf = run(toy_world, False, mode)
    compiled, compiled_losses, perf = run(toy_world, True, mode)
    assert all(net._compiled_call_impl is not None for net in compiled.denoisers())
    assert len(compiled_losses) == 3 and eager_losses[0] != eager_losses[-1]  # the updates changed the loss
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-6)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert eager_perf.compile_steps == 0 and perf.compile_steps >= 1


def test_a_student_made_from_a_compiled_teacher_runs_its_own_weights():
    from objective_helpers import PROMPTS, tiny_toy

    teacher = tiny_toy()
    teacher.denoiser.compile(backend="eager")
    student = make_student(teacher)
    with torch.no_grad():
        for p in student.denoiser.parameters():
            p.zero_()
    x, t, text = torch.randn(1, 3, 4, 8, 8), torch.tensor([0.5]), teacher.encode_text(PROMPTS[:1])
    with torch.no_grad():
        assert torch.equal(student(x, t, text), torch.zeros_like(x))
        assert not torch.equal(teacher(x, t, text), torch.zeros_like(x))


def test_bad_compile_settings_are_user_errors(toy_world):
    with pytest.raises(UserError, match="compile_backend 'nope' is not one of"):
        Distillation(str(toy_world / "teacher"), [TrajectoryGuidance()], compile=True, compile_backend="nope")
    with pytest.raises(UserError, match="compile_mode 'fast' is not one of"):
        Distillation(str(toy_world / "teacher"), [TrajectoryGuidance()], compile=True, compile_mode="fast")
    with pytest.raises(UserError, match="is an inductor setting"):
        Distillation(str(toy_world / "teacher"), [TrajectoryGuidance()], compile=True, compile_mode="max-autotune",
                     compile_backend="aot_eager")


class Clock:
    """A fake ``time.perf_counter``: a step takes 1 s, a step that compiles 100 s more."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recompiling(L.LightningModule):
    """One Linear; at step 2 a function is compiled for the first time (a recompile in the middle of a run)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.clock = clock

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        if batch_idx == 2:
            torch.compile(lambda x: x * 2, backend="eager")(torch.ones(3))
            self.clock.now += 100.0
        return self.layer(batch[0]).square().mean()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(12, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_step_that_compiles_leaves_no_trace_in_the_rates(monkeypatch):
    from lightning.pytorch.callbacks import throughput_monitor
    from lightning.pytorch.trainer.states import RunningStage

    clock = Clock()
    fake_time = types.SimpleNamespace(perf_counter=clock)
    monkeypatch.setattr(throughput_monitor, "time", fake_time)
    monkeypatch.setattr(throughput, "time", fake_time)
    rates = []

    class Rates(L.Callback):
        def on_train_batch_end(self, trainer, *_):
            rates.append(perf._throughputs[RunningStage.TRAINING].compute().get("device/batches_per_sec"))

    perf = ThroughputMemory(window_size=3)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[perf, Rates()])
    trainer.fit(Recompiling(clock))
    assert perf.compile_steps == 1
    assert [r for r in rates if r is not None] == [1.0, 1.0, 1.0]  # 5 steps counted, windows of 3 from the third
