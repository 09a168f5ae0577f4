"""Session fixtures of the synthetic-dataset tests: the tiny flow and DDPM teachers (see ``synth_helpers``)."""

from __future__ import annotations

import pytest
from synth_helpers import tiny_teacher

from vdistill.backbones.toy import ToyBackbone
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule


@pytest.fixture(scope="session")
def teacher() -> ToyBackbone:
    return tiny_teacher(FlowSchedule(shift=3.0))


@pytest.fixture(scope="session")
def ddpm_teacher() -> ToyBackbone:
    return tiny_teacher(DDPMSchedule(prediction_type="v_prediction"))
