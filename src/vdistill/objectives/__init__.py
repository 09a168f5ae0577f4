"""Distillation objectives: each takes a batch and the models and returns named loss terms (see ``base``)."""

from vdistill.objectives.adversarial import AdversarialAlignment, FakeQueue
from vdistill.objectives.base import Models, Objective, check_needs
from vdistill.objectives.consistency import ConsistencyDistillation, pseudo_huber
from vdistill.objectives.distribution_matching import DistributionMatching, dmd_gradient, dmd_loss
from vdistill.objectives.trajectory import TrajectoryGuidance, jump_coefficients, jump_target, key_point_predictions

__all__ = ["AdversarialAlignment", "ConsistencyDistillation", "DistributionMatching", "FakeQueue", "Models",
           "Objective", "TrajectoryGuidance", "check_needs", "dmd_gradient", "dmd_loss", "jump_coefficients",
           "jump_target", "key_point_predictions", "pseudo_huber"]
