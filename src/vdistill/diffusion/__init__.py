"""Diffusion math: schedules and their solver step (DDIM eta 0 / Euler), guidance and consistency scalings."""

from vdistill.diffusion.consistency import boundary_scalings
from vdistill.diffusion.guidance import apply_cfg, guidance_scale_embedding
from vdistill.diffusion.schedules import DDPMSchedule, FlowSchedule, NoiseSchedule, timesteps_at

__all__ = ["DDPMSchedule", "FlowSchedule", "NoiseSchedule", "apply_cfg", "boundary_scalings",
           "guidance_scale_embedding", "timesteps_at"]
