"""Diffusion math: schedules, solver steps, guidance and consistency scalings."""

from vdistill.diffusion.consistency import boundary_scalings
from vdistill.diffusion.guidance import apply_cfg, guidance_scale_embedding
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule, NoiseSchedule, timesteps_at
from vdistill.diffusion.solvers import ddim_step, euler_step

__all__ = ["DDPMSchedule", "FlowSchedule", "NoiseSchedule", "apply_cfg", "boundary_scalings", "ddim_step",
           "euler_step", "guidance_scale_embedding", "timesteps_at"]
