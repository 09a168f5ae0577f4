"""``offload: [text_encoders, critics]``: between steps the text encoder and the critics sit on the offload device;
each use moves them in (one ``.to`` each) and they go out again (the text encoder after each call, the critics after
the optimizer step); the losses are those of a run without offloading. On a CPU-only machine compute and offload
device are both the CPU, so the test records the ``.to`` calls and the holders' state rather than devices."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from objective_helpers import tiny_toy

from vdistill.backbones.io import save_backbone
from vdistill.backbones.student import StudentConfig
from vdistill.critics import load_critic
from vdistill.data.toy import ToyVideos
from vdistill.errors import UserError
from vdistill.modules.distill import Distillation
from vdistill.objectives import ConsistencyDistillation
from vdistill.objectives.reward import RewardFeedback

pytestmark = pytest.mark.filterwarnings("ignore:critic .* has no checkpoint")


class Watch(L.Callback):
    """Records the losses, and whether every offloaded part is out (holder state, parameters' device) at each
    step's start."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.out_at_start: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        holders = pl_module._on_demand
        self.out_at_start.append(all(not h.resident and all(p.device == h.offload_device
                                                             for p in h.module.parameters()) for h in holders))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def run(teacher_dir, offload, steps: int = 2):
    torch.manual_seed(0)
    critics = {"img": load_critic("toy-image", size="tiny", num_frames=2),
               "vid": load_critic("toy-video", size="tiny", num_frames=2)}
    objectives = [ConsistencyDistillation(w_min=1.0, w_max=3.0), RewardFeedback({"img": 1.0, "vid": 1.0})]
    L.seed_everything(0)
    model = Distillation(str(teacher_dir), objectives, student=StudentConfig(guidance_embedding=True), lr=1e-3,
                         critics=critics, offload=offload)
    calls: dict[str, list] = {}
    for name, module in [("text", model.teacher.text_encoder), *model.critics.items()]:
        def spy(*args, _record=calls.setdefault(name, []), _inner=module.to, **kwargs):
            _record.append(str(args[0] if args else kwargs.get("device")))
            return _inner(*args, **kwargs)

        module.to = spy
    encoder_calls = [0]
    model.teacher.text_encoder.register_forward_hook(lambda *_: encoder_calls.__setitem__(0, encoder_calls[0] + 1))
    watch = Watch()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[watch])
    trainer.fit(model, datamodule=ToyVideos(batch_size=2, num_frames=4, size=8))
    return model, watch, calls, encoder_calls[0]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_backbone(tiny_toy(), tmp_path_factory.mktemp("offload") / "teacher")


def test_offloaded_parts_wait_off_the_device_and_the_losses_are_unchanged(teacher_dir):
    _, plain, _, _ = run(teacher_dir, None)
    model, watch, calls, encoder_calls = run(teacher_dir, ["text_encoders", "critics"])
    assert watch.losses == plain.losses
    assert watch.out_at_start == [True, True]
    text = model.teacher.text_encoder.vdistill_on_demand
    critics = [c.vdistill_on_demand for c in model.critics.values()]
    assert encoder_calls >= 2  # each step encodes the prompts (and the empty prompt)
    # out at fit start, then in and out around every call of the text encoder, once per step for the critics
    assert text.moves == ["out"] + ["in", "out"] * encoder_calls
    assert all(c.moves == ["out"] + ["in", "out"] * 2 for c in critics)
    assert len(calls["text"]) == len(text.moves) and set(calls["text"]) == {"cpu"}
    assert all(len(calls[name]) == 5 for name in model.critics)
    assert model.student.text_encoder is model.teacher.text_encoder  # one encoder, one holder


def test_unknown_offload_parts_are_user_errors(teacher_dir):
    with pytest.raises(UserError, match=r"offload \['vae'\] is not among \['text_encoders', 'critics'\]"):
        Distillation(str(teacher_dir), [ConsistencyDistillation()], offload=["vae"])
