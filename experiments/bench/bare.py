"""The bare side of the overhead benchmark: the same math as vdistill, written as a user would in plain PyTorch on
the diffusers / transformers / peft classes of a Wan2.1 folder, without vdistill.

* :func:`trajectory_step`: one AdamW step of AccVideo's trajectory loss (Eq. 6) on a full student;
* :func:`consistency_step`: one AdamW step of latent consistency distillation (LCM / T2V-Turbo) with a LoRA student,
  the guidance scale embedded, the online student as target, the gradient norm clipped;
* :func:`synth`: the teacher's Euler steps with CFG, the key points written with safetensors;
* :func:`sample`: ``WanPipeline.from_pretrained(folder)(prompts, ...)`` and the frames written with numpy.

As a script (``python bare.py synth ...`` / ``python bare.py sample ...``) it is the bare counterpart of the whole
``vdistill synth`` / ``vdistill sample`` commands; it imports neither vdistill nor Lightning.
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import math
import re
from pathlib import Path

import torch
from torch import Tensor, nn

SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0  # LCM's boundary scalings


# -- the Wan folder, read as the diffusers pipeline reads it ----------------------------------------------------
def flow_shift(root: Path) -> float:
    return float(json.loads((root / "scheduler" / "scheduler_config.json").read_text())["flow_shift"])


def sigmas(steps: int, shift: float) -> Tensor:
    """The shifted flow grid ``[steps + 1]`` from 1 to 0 (the Euler sampler's, and the consistency grid)."""
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


class Text:
    """UMT5 states of prompts, zero past each prompt's length (``WanPipeline._get_t5_prompt_embeds``)."""

    def __init__(self, root: Path, max_length: int = 512) -> None:
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
        self.encoder = UMT5EncoderModel.from_pretrained(str(root / "text_encoder")).eval()
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Tensor:
        clean = [re.sub(r"\s+", " ", html.unescape(html.unescape(p)).strip()).strip() for p in prompts]
        tok = self.tokenizer(clean, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        states = self.encoder(tok.input_ids, tok.attention_mask).last_hidden_state
        keep = torch.arange(states.shape[1])[None, :] < tok.attention_mask.sum(1, keepdim=True)
        return states.masked_fill(~keep[..., None], 0.0)


def load_transformer(root: Path) -> nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(str(root / "transformer")).eval().requires_grad_(False)


def velocity(net: nn.Module, x: Tensor, sigma: Tensor, states: Tensor) -> Tensor:
    """The transformer's velocity for latents ``[B, C, T, H, W]`` at flow times ``sigma`` ``[B]``."""
    return net(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=states, return_dict=False)[0]


# -- training steps ------------------------------------------------------------------------------------------
class TrajectoryStudent:
    """A full copy of the teacher's transformer trained on key points ``latents [B, K, C, T, H, W]``,
    ``timesteps [B, K]``, ``states [B, L, D]`` with AdamW."""

    def __init__(self, teacher: nn.Module, lr: float) -> None:
        self.net = copy.deepcopy(teacher).train().requires_grad_(True)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=0.0)

    def loss(self, latents: Tensor, timesteps: Tensor, states: Tensor) -> Tensor:
        pairs = latents.shape[1] - 1
        x, x_next = latents[:, :-1].flatten(0, 1), latents[:, 1:].flatten(0, 1)
        t, t_next = timesteps[:, :-1].flatten(), timesteps[:, 1:].flatten()
        # one Euler step from x lands on x_next: the finite-difference velocity (AccVideo Eq. 6, A = 1, B = dt)
        target = (x_next - x) / (t_next - t).reshape(-1, 1, 1, 1, 1)
        raw = velocity(self.net, x, t, states.repeat_interleave(pairs, dim=0))
        return (raw - target).square().mean()

    def step(self, latents: Tensor, timesteps: Tensor, states: Tensor) -> float:
        loss = self.loss(latents, timesteps, states)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


def guidance_embedding(w: Tensor, dim: int = 256) -> Tensor:
    """LCM's sinusoidal embedding of ``1000 w`` (sin then cos)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = (w.float() * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)


class ConsistencyStudent:
    """A LoRA student (peft adapters on every Linear of the DiT blocks) with LCM's zero-initialised guidance
    projection added to the time embedding, trained with latent consistency distillation (one solver grid of
    ``n_grid`` steps, skip ``jump`` grid steps, ``w ~ U[w_min, w_max]``, pseudo-Huber ``c``, online target)."""

    def __init__(self, teacher: nn.Module, shift: float, lr: float, rank: int, n_grid: int = 50, jump: int = 1,
                 w_range: tuple[float, float] = (2.0, 6.0), huber_c: float = 0.001, clip: float = 1.0) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        self.teacher = teacher
        self.net = copy.deepcopy(teacher).train()
        targets = [n for n, m in self.net.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=float(rank), lora_dropout=0.0,
                                           target_modules="|".join(re.escape(n) for n in targets)), self.net)
        for name, p in self.net.named_parameters():
            p.requires_grad_("lora_" in name)
        time_embedder = self.net.condition_embedder.time_embedder
        self.proj = nn.Linear(256, time_embedder.linear_2.out_features, bias=False)
        nn.init.zeros_(self.proj.weight)
        self._w_emb: Tensor | None = None
        time_embedder.register_forward_hook(
            lambda _m, _i, out: out if self._w_emb is None else out + self.proj(self._w_emb).to(out.dtype))
        self.params = [p for p in self.net.parameters() if p.requires_grad] + list(self.proj.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.grid, self.n_grid, self.jump = sigmas(n_grid, shift), n_grid, jump
        self.w_range, self.huber_c, self.clip = w_range, huber_c, clip

    def student(self, x: Tensor, t: Tensor, states: Tensor, w: Tensor) -> Tensor:
        self._w_emb = guidance_embedding(w)
        try:
            return velocity(self.net, x, t, states)
        finally:
            self._w_emb = None

    @staticmethod
    def f(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
        """``c_skip x_t + c_out x0_hat`` with ``x0_hat = x_t - t v`` (flow), the scalings at ``10 * 1000 t``."""
        scaled = (t * 1000.0 * TIMESTEP_SCALING).reshape(-1, 1, 1, 1, 1)
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
        return c_skip * x_t + c_out * (x_t - t.reshape(-1, 1, 1, 1, 1) * v)

    def draw(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = torch.randint(0, self.n_grid, (x0.shape[0],))
        w = torch.rand(x0.shape[0]) * (self.w_range[1] - self.w_range[0]) + self.w_range[0]
        return n, torch.randn_like(x0), w

    def loss(self, x0: Tensor, states: Tensor, uncond: Tensor, n: Tensor, noise: Tensor, w: Tensor) -> Tensor:
        b = x0.shape[0]
        t, t_prev = self.grid[n], self.grid[(n + self.jump).clamp(max=self.n_grid)]
        tb = t.reshape(-1, 1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * noise
        with torch.no_grad():
            both = velocity(self.teacher, torch.cat([x_t, x_t]), torch.cat([t, t]),
                            torch.cat([uncond.expand(b, -1, -1), states]))
            v_u, v_c = both.chunk(2)
            v = v_u + (1 + w).reshape(-1, 1, 1, 1, 1) * (v_c - v_u)  # LCM's cond + w (cond - uncond)
            x_prev = x_t + (t_prev - t).reshape(-1, 1, 1, 1, 1) * v  # one Euler step of the guided teacher
            target = self.f(x_prev, self.student(x_prev, t_prev, states, w), t_prev)
        pred = self.f(x_t, self.student(x_t, t, states, w), t)
        return ((pred - target).square() + self.huber_c**2).sqrt().sub(self.huber_c).mean()

    def step(self, x0: Tensor, states: Tensor, uncond: Tensor) -> float:
        loss = self.loss(x0, states, uncond, *self.draw(x0))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


# -- the two commands ----------------------------------------------------------------------------------------
@torch.no_grad()
def synth(root: Path, prompts: list[str], out: Path, steps: int, keys: list[int], cfg: float, frames: int,
          height: int, width: int, batch_size: int, seed: int = 0) -> None:
    """The teacher's ``steps`` Euler steps with CFG (uncond and cond as one batched forward) from the noise of seed
    ``seed + i``, the key points and text states written per batch with safetensors."""
    from safetensors.torch import save_file

    text, net = Text(root), load_transformer(root)
    grid = sigmas(steps, flow_shift(root))
    shape = (net.config.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    uncond = text([""])
    out.mkdir(parents=True, exist_ok=True)
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo: lo + batch_size]
        b = len(chunk)
        x = torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(seed + lo + i))
                         for i in range(b)])
        states = torch.cat([uncond.expand(b, -1, -1), text(chunk)])
        kept = [x] if 0 in keys else []
        for i in range(steps):
            v_u, v_c = velocity(net, torch.cat([x, x]), grid[i].expand(2 * b), states).chunk(2)
            x = x + (grid[i + 1] - grid[i]) * (v_u + cfg * (v_c - v_u))
            if i + 1 in keys:
                kept.append(x)
        save_file({"latents": torch.stack(kept, 1).contiguous(), "text": states[b:].contiguous()},
                  str(out / f"shard_{lo // batch_size:05d}.safetensors"))


@torch.no_grad()
def sample(folder: Path, prompts: list[str], out: Path, steps: int, frames: int, height: int, width: int,
           seed: int = 0) -> None:
    """``WanPipeline.from_pretrained(folder)`` called on the prompts (no CFG, one generator per prompt), the frames
    written as uint8 with numpy."""
    import numpy as np
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    frames_out = pipe(prompts, num_inference_steps=steps, guidance_scale=1.0, num_frames=frames, height=height,
                      width=width, generator=gens, output_type="np").frames
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "videos.npy", (np.asarray(frames_out) * 255).round().astype(np.uint8))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("command", choices=["synth", "sample"])
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="a text file, one prompt a line")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--key-indices", default="0,1")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    if args.command == "synth":
        synth(Path(args.model), prompts, Path(args.out), args.steps, [int(k) for k in args.key_indices.split(",")],
              args.cfg, args.frames, args.height, args.width, args.batch_size)
    else:
        sample(Path(args.model), prompts, Path(args.out), args.steps, args.frames, args.height, args.width)


if __name__ == "__main__":
    main()
