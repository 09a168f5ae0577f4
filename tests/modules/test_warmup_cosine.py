"""The learning rate of the modules that train from scratch (TeacherTraining, CriticTraining): linear warm-up from 0,
then a cosine decay to ``min_lr_ratio * lr`` at the run's last step."""

from __future__ import annotations

import math

import lightning as L
import pytest
from objective_helpers import tiny_toy

from vdistill.data.toy import ToyVideos
from vdistill.modules.critic_training import CriticTraining
from vdistill.modules.teacher import TeacherTraining

LR, WARM, STEPS, FLOOR = 1e-2, 4, 12, 0.1
MODULES = {
    "teacher": lambda: TeacherTraining(tiny_toy().requires_grad_(True).train(), lr=LR, warmup_steps=WARM,
                                       min_lr_ratio=FLOOR),
    "critics": lambda: CriticTraining(critics=("toy-video",), critic_size="tiny", lr=LR, warmup_steps=WARM,
                                      min_lr_ratio=FLOOR),
}


@pytest.mark.parametrize("name", MODULES)
def test_warm_up_then_cosine_to_the_floor(name, tmp_path):
    class Record(L.Callback):
        lrs: list[float] = []

        def on_train_batch_start(self, trainer, *_):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    L.seed_everything(0)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[record := Record()])
    trainer.fit(MODULES[name](), datamodule=ToyVideos(batch_size=2, num_frames=4, size=8, samples_per_epoch=64))
    # the rate each step used, and the one the step after the last would use
    lrs = [*record.lrs, trainer.optimizers[0].param_groups[0]["lr"]]
    assert len(lrs) == STEPS + 1
    # linear from 0 to the peak, reached once the warm-up's steps are done
    assert lrs[:WARM + 1] == pytest.approx([LR * s / WARM for s in range(WARM + 1)])
    assert max(lrs) == pytest.approx(LR)
    # then half a cosine, monotone down to min_lr_ratio * lr at max_steps
    decay = lrs[WARM:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    span = STEPS - WARM
    cosine = [FLOOR * LR + (1 - FLOOR) * LR * (1 + math.cos(math.pi * k / span)) / 2 for k in range(span + 1)]
    assert decay == pytest.approx(cosine) and lrs[-1] == pytest.approx(FLOOR * LR)
