"""vdistill's own diffusers schedulers, for the student samplers that no stock scheduler config reproduces.

An exported student (:mod:`vdistill.backbones.pipeline_export`) gets a stock diffusers scheduler whenever one can
be configured to visit exactly its sampling times (:mod:`vdistill.diffusion.export_scheduler`). Where none can, its
``scheduler/`` holds one of these subclasses of the stock scheduler, whose config carries the explicit grid:

* :class:`KeyTimestepEulerScheduler` (``FlowMatchEulerDiscreteScheduler``): Euler through a flow student's key
  sigmas in any spacing (AccVideo's trajectory students with uneven key points);
* :class:`KeyTimestepDDIMScheduler` (``DDIMScheduler``): DDIM (eta 0) through a DDPM student's key timesteps;
* :class:`FlowConsistencyScheduler` (``FlowMatchEulerDiscreteScheduler``): the multistep consistency sampler of a
  flow student (:func:`vdistill.sampling.consistency.sample_consistency`): LCM's boundary scalings and re-noising,
  with its per-step noise drawn from the pipeline's generator (``WanPipeline`` passes none to ``scheduler.step``:
  set ``pipe.scheduler.generator``).

``model_index.json`` names them as ``["vdistill.diffusion.pipeline_schedulers", "<class>"]``. diffusers imports no
module a folder names: ``import vdistill.diffusion.pipeline_schedulers`` before ``DiffusionPipeline.from_pretrained``.
Each class takes the stock class's config keys plus its grid (diffusers reads a scheduler's config keys from the
signature of its ``__init__``), and asks for exactly the student's number of steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from vdistill.diffusion.consistency import boundary_scalings

# diffusers finds how to load a component of a custom library by looking its base classes up in that library's
# module (``getattr(library, "SchedulerMixin")``): this module must export SchedulerMixin.
__all__ = ["FlowConsistencyScheduler", "KeyTimestepDDIMScheduler", "KeyTimestepEulerScheduler", "SchedulerMixin",
           "extends_config"]


def extends_config(parent: type, **extra: Any) -> Callable:
    """Give ``__init__(self, <extra>, **kwargs)`` the signature of ``parent.__init__`` plus the ``extra`` keyword
    arguments (with their defaults), so that diffusers registers, saves and reloads the parent's config keys and
    the extra ones (``ConfigMixin.extract_init_dict`` keeps only the keys of that signature)."""

    def wrap(init: Callable) -> Callable:
        sig = inspect.signature(parent.__init__)
        added = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in extra.items()]
        init.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *added])
        return init

    return wrap


def _wrong_steps(cls: str, steps: int, wanted: int) -> ValueError:
    return ValueError(f"{cls} samples along the student's own {wanted}-step grid: call the pipeline with "
                      f"num_inference_steps={wanted}, not {steps}")


class KeyTimestepEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """Euler steps ``x + (sigma_next - sigma) v`` through ``key_sigmas`` (noisiest first, the end included): a flow
    student's own key timesteps, :meth:`vdistill.backbones.base.Backbone.set_key_timesteps`."""

    @extends_config(FlowMatchEulerDiscreteScheduler, key_sigmas=())
    @register_to_config
    def __init__(self, key_sigmas=(), **kwargs):
        super().__init__(**kwargs)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | None = None, **kwargs) -> None:
        keys = [float(s) for s in self.config.key_sigmas]
        if sigmas is not None or kwargs.get("timesteps") is not None:
            return super().set_timesteps(num_inference_steps, device, sigmas=sigmas, **kwargs)
        if num_inference_steps != len(keys) - 1:
            raise _wrong_steps(type(self).__name__, num_inference_steps, len(keys) - 1)
        # custom sigmas go through the config's shift, which is 1 here (an identity): the grid stays as it is
        super().set_timesteps(num_inference_steps, device, sigmas=keys[:-1])
        self.sigmas[-1] = keys[-1]


class KeyTimestepDDIMScheduler(DDIMScheduler):
    """DDIM (eta 0) through ``key_timesteps`` (DDPM indices, noisiest first; the end, ``-1``, is clean, as vdistill's
    :class:`~vdistill.diffusion.schedules.DDPMSchedule` and DDIM's ``set_alpha_to_one``): each step goes to the next
    key timestep, where stock DDIM goes ``num_train_timesteps // num_inference_steps`` down."""

    @extends_config(DDIMScheduler, key_timesteps=())
    @register_to_config
    def __init__(self, key_timesteps=(), **kwargs):
        super().__init__(**kwargs)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        keys = [int(t) for t in self.config.key_timesteps]
        if num_inference_steps != len(keys) - 1:
            raise _wrong_steps(type(self).__name__, num_inference_steps, len(keys) - 1)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.tensor(keys[:-1], dtype=torch.long, device=device)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True) -> DDIMSchedulerOutput | tuple:
        """DDIM eq. (12) with eta 0 from ``timestep`` to the next key timestep (the parent's formulas)."""
        if eta != 0:
            raise ValueError(f"{type(self).__name__} is deterministic (eta 0), got eta={eta}")
        keys = [int(t) for t in self.config.key_timesteps]
        t = int(timestep)
        prev = keys[keys.index(t) + 1]
        alpha = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        beta = 1 - alpha
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0, eps = (sample - beta**0.5 * model_output) / alpha**0.5, model_output
        elif kind == "sample":
            x0 = model_output
            eps = (sample - alpha**0.5 * x0) / beta**0.5
        else:  # v_prediction
            x0 = alpha**0.5 * sample - beta**0.5 * model_output
            eps = alpha**0.5 * model_output + beta**0.5 * sample
        if self.config.thresholding:
            x0 = self._threshold_sample(x0)
        elif self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        prev_sample = alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps
        return DDIMSchedulerOutput(prev_sample, x0) if return_dict else (prev_sample, x0)


class FlowConsistencyScheduler(FlowMatchEulerDiscreteScheduler):
    """Multistep consistency sampling of a flow student (LCM's ``LCMScheduler.step`` on the flow path): at each of
    ``consistency_sigmas`` the clean estimate ``c_skip x + c_out (x - sigma v)`` (boundary scalings at the network
    timestep ``1000 sigma``, :func:`vdistill.diffusion.consistency.boundary_scalings`), re-noised to the next sigma
    with fresh noise ``(1 - s') x0 + s' eps``; the last step returns the clean estimate.

    The noise comes from the ``generator`` passed to :meth:`step`, else from ``self.generator`` (``WanPipeline`` does
    not pass its generator to ``scheduler.step``: set ``pipe.scheduler.generator = generator``, the generator given
    to the pipeline, so the noise continues its stream as vdistill's sampler does), else from torch's global RNG.
    """

    @extends_config(FlowMatchEulerDiscreteScheduler, consistency_sigmas=(), timestep_scaling=10.0)
    @register_to_config
    def __init__(self, consistency_sigmas=(), timestep_scaling=10.0, **kwargs):
        super().__init__(**kwargs)
        self.generator: torch.Generator | list[torch.Generator] | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      **kwargs) -> None:
        keys = [float(s) for s in self.config.consistency_sigmas]
        if num_inference_steps != len(keys):
            raise _wrong_steps(type(self).__name__, num_inference_steps, len(keys))
        super().set_timesteps(num_inference_steps, device, sigmas=keys)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True,
             **kwargs) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index].to(sample.device)
        x = sample.float()
        c_skip, c_out = boundary_scalings(sigma.reshape(1) * self.config.num_train_timesteps,
                                          timestep_scaling=self.config.timestep_scaling)
        denoised = c_skip.to(x.device) * x + c_out.to(x.device) * (x - sigma * model_output.float())
        if self.step_index == self.num_inference_steps - 1:
            prev = denoised
        else:
            noise = randn_tensor(denoised.shape, generator=generator if generator is not None else self.generator,
                                 device=denoised.device, dtype=denoised.dtype)
            s_next = self.sigmas[self.step_index + 1].to(sample.device)
            prev = (1 - s_next) * denoised + s_next * noise
        self._step_index += 1
        prev = prev.to(sample.dtype)  # vdistill's consistency sampler keeps the latents in float32 throughout
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)
