"""PeriodicEvaluation: ToyBench and critic curves at the right steps, equal to scoring the student's own samples,
and the user errors of its configuration."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from callback_helpers import PROMPTS, MemoryLogger, distillation, fit

from vdistill.callbacks import EMA, PeriodicEvaluation
from vdistill.errors import UserError
from vdistill.sampling.generate import generate
from vdistill.world.toybench import evaluate

TINY_CRITIC = {"toy-video": {"checkpoint": None, "size": "tiny"}}
TOYBENCH = ["eval/semantic", "eval/quality", "eval/colour", "eval/shape", "eval/motion"]


def test_toybench_and_critic_curves(toy, tmp_path):
    logger = MemoryLogger()
    evaluation = PeriodicEvaluation(every_n_steps=2, prompts=PROMPTS, repeat=2, critics=TINY_CRITIC, seed=3)
    L.seed_everything(0)
    model = distillation(toy)
    trainer = fit(model, toy, tmp_path, [EMA(decay=0.5), evaluation], max_steps=3, logger=logger)

    logged = [(step, m) for step, m in logger.history if "eval/semantic" in m]
    assert [step for step, _ in logged] == [2, 3]  # every 2 steps + the end
    final = logged[-1][1]
    assert set(final) == {*TOYBENCH, "eval/toy-video"}
    assert all(trainer.callback_metrics[k].item() == pytest.approx(v) for k, v in final.items())
    record = json.loads((tmp_path / "eval" / "step_000003.json").read_text())  # no logger dir: the root folder
    assert record["step"] == 3 and record["prompts"] == [p for p in PROMPTS for _ in range(2)]
    assert set(record["toybench"]["per_prompt"]) == set(PROMPTS)

    # the same numbers from the student's own samples with the EMA weights (prompt i seeded 3 + i)
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
    student = model.student.eval()
    with ema.averaged_weights(model):
        videos = generate(student, record["prompts"], seed=3, progress=False).videos
    overall = evaluate(videos, record["prompts"]).overall
    assert all(final[f"eval/{m}"] == pytest.approx(overall[m]) for m in ("semantic", "quality", "motion"))
    with torch.no_grad():
        score = evaluation.critics(model)["toy-video"](videos, record["prompts"]).mean().item()
    assert final["eval/toy-video"] == pytest.approx(score, abs=1e-6)


def test_user_errors(toy):
    with pytest.raises(UserError, match="prompt 'a cat' is not a toy caption"):
        PeriodicEvaluation(prompts=["a cat"], toybench=True)
    with pytest.raises(UserError, match="unknown critic 'hps'; valid choices: .*hpsv2"):
        PeriodicEvaluation(critics=["hps"])
    with pytest.raises(UserError, match="unknown critic 'pick'; valid choices"):
        PeriodicEvaluation(critics={"mine": {"critic": "pick"}})
    nothing = PeriodicEvaluation(prompts=["a cat"])
    with pytest.raises(UserError, match="nothing to measure.*critics to names from: .*toy-video"):
        nothing.setup(None, distillation(toy), "fit")
