"""The strategy fragments (``experiments/strategies/``) and the precision switches.

DDP runs for real: the CLI with ``ddp.yaml`` and 2 gloo processes on CPU. Lightning runs FSDP and DeepSpeed on GPUs
only, so their fragments are parsed and their strategy objects built here; on top of that, the distillation step
is sharded with torch's FSDP itself on 2 CPU processes, with ``fsdp.yaml``'s wrap policy, and must give the weights
of the unsharded step.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from vdistill.backbones.student import StudentConfig
from vdistill.cli import main
from vdistill.commands.lightning_cli import VDistillCLI
from vdistill.data.toy import ToyVideos
from vdistill.data.trajectories import TrajectoryData
from vdistill.modules.distill import Distillation
from vdistill.objectives import AdversarialAlignment, ConsistencyDistillation, TrajectoryGuidance
from vdistill.objectives.reward import RewardFeedback
from vdistill.roles.discriminator import Discriminator
from vdistill.training.clipping import ShardedGradientClipping

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ROOT / "experiments" / "strategies"
ACCVIDEO = str(ROOT / "experiments" / "toy" / "accvideo" / "accvideo.yaml")
FRAGMENTS = sorted(p.stem for p in STRATEGIES.glob("*.yaml"))
pytestmark = pytest.mark.filterwarnings("ignore:critic 'img' has no checkpoint")

#: a callback the CLI loads by class path: each rank saves its student, heads and the samples it trained on
DUMP = '''
import torch
import lightning as L


class Dump(L.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.indices = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.indices += batch["index"].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"student": pl_module.student.state_dict(), "heads": pl_module.discriminator.state_dict(),
                    "indices": self.indices}, f"{self.out}/rank{trainer.global_rank}.pt")
'''


def accvideo_mix(teacher: str, **kw) -> Distillation:
    return Distillation(teacher, [TrajectoryGuidance(), AdversarialAlignment(queue_size=2)],
                        discriminator=Discriminator(hidden=8), lr=1e-3, disc_lr=1e-3, **kw)


def turbo_mix(teacher: str, **kw) -> Distillation:
    return Distillation(teacher, [ConsistencyDistillation(w_min=1.0, w_max=3.0, guidance=2.0),
                                  RewardFeedback({"img": 0.5})],
                        student=StudentConfig(guidance_embedding=True), lr=1e-3,
                        critics={"img": {"critic": "toy-image", "checkpoint": None, "size": "tiny", "num_frames": 2}},
                        **kw)


# -- DDP: a real run ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_fragment_runs_two_cpu_processes_that_end_with_one_student(tiny_world, tmp_path):
    (tmp_path / "dump.py").write_text(DUMP)
    cfg = {"seed_everything": 0, "trainer": {
        "max_steps": 3, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "callbacks": [{"class_path": "ModelCheckpoint", "init_args": {"dirpath": str(tmp_path / "ckpt")}},
                      {"class_path": "dump.Dump", "init_args": {"out": str(tmp_path)}}]}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    args = ["fit", "--config", ACCVIDEO, "--config", str(STRATEGIES / "ddp.yaml"),
            "--config", str(tmp_path / "run.yaml"), f"--model.init_args.teacher={tiny_world / 'flow'}",
            "--model.init_args.discriminator.init_args.hidden=8", f"--data.init_args.root={tiny_world / 'synvid'}",
            "--data.init_args.batch_size=2", "--trainer.accelerator=cpu", "--trainer.devices=2",
            "--trainer.strategy.init_args.process_group_backend=gloo"]
    proc = subprocess.run([sys.executable, "-m", "vdistill.cli", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("student", "heads"):
        assert ranks[0][part].keys() == ranks[1][part].keys()
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), key  # all-reduced gradients: one model
    # each rank read its own half of each epoch (4 samples per rank, 2 batches of 2)
    first, second = ranks[0]["indices"][:4], ranks[1]["indices"][:4]
    assert sorted(first + second) == list(range(8))
    ckpt = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    states = ckpt["vdistill_rank_states"]  # every rank's RNG and fake queue, for an exact resume
    assert len(states) == 2
    queues = [s["extra"]["objectives.1.queue"]["0/latents"] for s in states]
    assert not torch.equal(*queues)  # each rank queued the fakes of its own data


# -- FSDP and DeepSpeed: parsed and built on CPU -------------------------------------------------------------
def strategy_from_fragment(name: str):
    """The ``trainer.strategy`` of a fragment, built the way the CLI builds it (jsonargparse)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    parser = ArgumentParser()
    parser.add_subclass_arguments(Strategy, "strategy")
    fragment = yaml.safe_load((STRATEGIES / f"{name}.yaml").read_text())
    return parser.instantiate_classes(parser.parse_object({"strategy": fragment["trainer"]["strategy"]})).strategy


def printed_config(*configs: Path) -> dict:
    """``vdistill fit --config ... --print_config``, parsed."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        mp.setattr(sys, "argv", ["vdistill"])  # LightningCLI warns when given args while sys.argv has some
        main(["fit", *[a for c in configs for a in ("--config", str(c))], "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


@pytest.fixture(scope="module")
def recipe_config() -> dict:
    return printed_config(ACCVIDEO)


@pytest.mark.parametrize("name", FRAGMENTS)
def test_each_fragment_changes_only_the_trainer_keys_it_sets(name, recipe_config):
    """On a recipe, a fragment sets its strategy (class and arguments as written) and the devices; the model, the
    data and the rest of the Trainer stay the recipe's."""
    fragment = yaml.safe_load((STRATEGIES / f"{name}.yaml").read_text())
    combined = printed_config(ACCVIDEO, STRATEGIES / f"{name}.yaml")
    assert set(fragment) == {"trainer"}
    written, strategy = fragment["trainer"]["strategy"], combined["trainer"]["strategy"]
    assert strategy["class_path"] == written["class_path"]
    for key, value in written["init_args"].items():  # (a set of classes, the wrap policy, prints in any order)
        got = strategy["init_args"][key]
        assert sorted(got) == sorted(value) if isinstance(value, list) else got == value, key
    for key, value in fragment["trainer"].items():
        if key != "strategy":
            assert combined["trainer"][key] == value, key
    rest = [{**c, "trainer": {k: v for k, v in c["trainer"].items() if k not in fragment["trainer"]}}
            for c in (combined, recipe_config)]
    assert rest[0] == rest[1]


def test_the_ema_target_is_refused_where_parameters_are_sharded(tiny_world):
    from types import SimpleNamespace

    from vdistill.errors import UserError
    from vdistill.modules.distill import shards_parameters

    sharded = {name: shards_parameters(strategy_from_fragment(name))
               for name in ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")}
    assert sharded == {"ddp": False, "fsdp": True, "deepspeed_zero2": False, "deepspeed_zero3": True}
    model = turbo_mix(str(tiny_world / "ddpm"), target_ema_decay=0.95)
    model._trainer = SimpleNamespace(datamodule=ToyVideos(), strategy=strategy_from_fragment("fsdp"))
    with pytest.raises(UserError, match=r"EMA target .* FSDPStrategy shards them.*target_ema_decay: null"):
        model.setup("fit")


@pytest.mark.parametrize("name", ["ddp", "deepspeed_zero2", "deepspeed_zero3"])
def test_fragments_build_the_whole_run_on_cpu(name, tiny_world, tmp_path, monkeypatch):
    """Model, data and Trainer from recipe + fragment: the Trainer runs the fragment's strategy, sharding the
    parameters or not as it does (DeepSpeed refuses to start on CPU, it builds; Lightning's FSDP does not build on
    CPU: the sharded step itself is checked above)."""
    from vdistill.modules.distill import shards_parameters

    if name.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    monkeypatch.setattr(sys, "argv", ["vdistill"])
    cli = VDistillCLI(args=["--config", ACCVIDEO, "--config", str(STRATEGIES / f"{name}.yaml"),
                            f"--model.init_args.teacher={tiny_world / 'flow'}", "--trainer.accelerator=cpu",
                            "--trainer.devices=1", f"--trainer.default_root_dir={tmp_path}",
                            f"--data.init_args.root={tiny_world / 'synvid'}"], run=False)
    written = strategy_from_fragment(name)
    assert type(cli.trainer.strategy) is type(written)
    assert shards_parameters(cli.trainer.strategy) == shards_parameters(written)
    optimizer = cli.model.configure_optimizers()["optimizer"]  # ONE optimizer (and its warm-up schedule)
    assert [g["name"] for g in optimizer.param_groups] == ["student", "discriminator"]


def spawn_two(rank_fn, *args) -> None:
    """Run ``rank_fn(rank, 2, port, *args)`` on 2 spawned processes, with a free port for their process group."""
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(rank_fn, args=(2, port, *args), nprocs=2)


# -- FSDP: the sharded step equals the unsharded one (torch FSDP on 2 CPU processes) ---------------------------
class TrainingStep(torch.nn.Module):
    """What Lightning's strategy wrapper does: the root module's forward runs ``training_step``."""

    def __init__(self, module: Distillation) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch):
        return self.module.training_step(batch, 0)


def _fsdp_rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    strategy = strategy_from_fragment("fsdp")
    results = {}
    for name, mix in _fsdp_mixes(root).items():
        model, batches = mix()
        sharded = FSDP(TrainingStep(model), device_id=torch.device("cpu"),
                       sharding_strategy=strategy.sharding_strategy, **strategy.kwargs)
        assert sum(isinstance(m, FSDP) for m in sharded.modules()) > 1 + 2 * 3  # teacher and student blocks
        results[name] = _train(model, batches, sharded, summon=functools.partial(FSDP.summon_full_params, sharded))
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def _fsdp_mixes(root: str) -> dict:
    """Each mix: a fresh model (seeded) and 2 batches (every rank trains on the same ones)."""
    def accvideo():
        torch.manual_seed(0)
        model = accvideo_mix(f"{root}/flow")
        data = TrajectoryData(f"{root}/synvid", batch_size=2, shuffle=False)
        data.setup()
        model.bind_key_timesteps(data.dataset.timesteps.tolist())
        loader = iter(data.train_dataloader())
        return model, [next(loader) for _ in range(2)]

    def turbo():
        torch.manual_seed(0)
        model = turbo_mix(f"{root}/ddpm")
        loader = iter(ToyVideos(batch_size=2, num_frames=4, size=8).train_dataloader())
        return model, [next(loader) for _ in range(2)]

    def consistency():
        torch.manual_seed(0)
        model = Distillation(f"{root}/ddpm", [ConsistencyDistillation(w_min=1.0, w_max=3.0, guidance=2.0)],
                             student=StudentConfig(guidance_embedding=True), lr=1e-3)
        loader = iter(ToyVideos(batch_size=2, num_frames=4, size=8).train_dataloader())
        return model, [next(loader) for _ in range(2)]

    return {"trajectory+adversarial": accvideo, "consistency": consistency, "consistency+reward": turbo}


def _train(model, batches, step, summon) -> dict:
    """Two AdamW steps; the losses, the gradients of each step and the final weights (student and heads)."""
    import contextlib

    model.log = lambda *a, **k: None  # no Trainer here
    model.log_dict = lambda *a, **k: None
    optimizer = model.configure_optimizers()
    trained = ("student.", "discriminator.")
    out = {"loss": [], "grads": []}
    for i, batch in enumerate(batches):
        torch.manual_seed(100 + i)  # the same draws (noise, times, frames) in every run
        loss = step(batch)
        loss.backward()
        with summon(with_grads=True) if summon else contextlib.nullcontext():
            out["grads"].append({n.replace("_fsdp_wrapped_module.", ""): p.grad.clone()
                                 for n, p in model.named_parameters() if n.startswith(trained) and p.grad is not None})
        out["loss"].append(loss.detach())
        optimizer.step()
        optimizer.zero_grad()
    with summon() if summon else contextlib.nullcontext():
        out["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(trained)}
    return out


@pytest.mark.slow
def test_fsdp_fragment_sharded_step_equals_the_unsharded_one(tiny_world, tmp_path):
    """Bitwise for trajectory + adversarial and consistency (losses, gradients, weights after 2 AdamW steps); with the
    reward critic in the mix FSDP changes the critic's float rounding (the loss by ~3e-7 relative, measured), so the
    first step's loss and gradients are compared to 1e-5."""
    out = tmp_path / "fsdp.pt"
    spawn_two(_fsdp_rank, str(tiny_world), str(out))
    sharded = torch.load(out, weights_only=True)
    for name, mix in _fsdp_mixes(str(tiny_world)).items():
        model, batches = mix()
        plain = _train(model, batches, TrainingStep(model), summon=None)
        got = sharded[name]
        exact = "reward" not in name
        tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-5, "atol": 1e-7}
        # (AdamW turns tiny gradient differences into visible weight differences: after the first step only the
        # bitwise mixes can be compared)
        for i in range(len(batches) if exact else 1):
            torch.testing.assert_close(got["loss"][i], plain["loss"][i], **tol)
            assert got["grads"][i].keys() == plain["grads"][i].keys() and plain["grads"][i]
            for key, grad in plain["grads"][i].items():
                torch.testing.assert_close(got["grads"][i][key], grad, **tol, msg=f"{name}, step {i}: {key}")
        if exact:
            for key, value in plain["weights"].items():
                torch.testing.assert_close(got["weights"][key], value, rtol=0, atol=0, msg=f"{name}: {key}")


# -- gradient clipping under FSDP (Lightning's FSDPPrecision refuses clipping by norm) --------------------------
class ClippedNet(ShardedGradientClipping, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(6, 16)
        self.b = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _clip_loss(model) -> torch.Tensor:
    torch.manual_seed(1)
    return model(torch.randn(5, 6)).square().sum()


def _fsdp_clip_rank(rank: int, world: int, port: int, out: str) -> None:
    import types

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = ClippedNet()
    root = FSDP(net, device_id=torch.device("cpu"), use_orig_params=True)  # the whole module, as Lightning does
    net._trainer = types.SimpleNamespace(model=root)
    _clip_loss(root).backward()
    net.configure_gradient_clipping(None, 0.05, "norm")
    with FSDP.summon_full_params(root, with_grads=True):
        grads = {n.replace("_fsdp_wrapped_module.", ""): p.grad.clone() for n, p in net.named_parameters()}
    if rank == 0:
        torch.save(grads, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_clipping_by_norm_under_fsdp_equals_unsharded_clipping(tmp_path):
    """Found on a GPU (BENCHMARKS.md): the T2V-Turbo recipe (gradient_clip_val 1.0) failed under fsdp.yaml. The
    sharded run (2 CPU ranks, each gradient split between them) clips to the norm of the WHOLE gradient."""
    spawn_two(_fsdp_clip_rank, str(tmp_path / "g.pt"))
    sharded = torch.load(tmp_path / "g.pt", weights_only=True)
    torch.manual_seed(0)
    plain = ClippedNet()
    _clip_loss(plain).backward()
    assert torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.05) > 0.05  # the clip binds
    for name, p in plain.named_parameters():
        torch.testing.assert_close(sharded[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


# -- precision --------------------------------------------------------------------------------------------
def fit(model, data, precision: str, steps: int = 2) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
@pytest.mark.parametrize("mix", ["trajectory+adversarial", "consistency+reward"])
def test_bf16_with_every_objective(mix, precision, tiny_world):
    """bf16-mixed (autocast) for each objective; bf16-true casts the model to bf16 as DeepSpeed's bf16 does, and the
    float32 solver math around it must still run."""
    if mix == "trajectory+adversarial":
        model = accvideo_mix(str(tiny_world / "flow"))
        data = TrajectoryData(str(tiny_world / "synvid"), batch_size=2)
        terms = {"loss/trajectory", "loss/adv_g", "loss/adv_d"}
    else:
        model = turbo_mix(str(tiny_world / "ddpm"), target_ema_decay=0.9)
        data = ToyVideos(batch_size=2, num_frames=4, size=8)
        terms = {"loss/cd", "loss/reward_img"}
    before = [p.detach().float().clone() for p in model.student.denoiser.parameters()]
    trainer = fit(model, data, precision)
    logged = trainer.callback_metrics
    assert terms <= set(logged) and all(logged[t].isfinite() for t in terms)
    after = [p.detach().float() for p in model.student.denoiser.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(before, after))
    if precision == "bf16-true":
        assert next(model.student.denoiser.parameters()).dtype == torch.bfloat16


# -- DMD2 under FSDP: the fake score's group and a fake-only step -------------------------------------------------
def _dmd_mix(root: str):
    from vdistill.objectives.distribution_matching import DistributionMatching

    torch.manual_seed(0)
    model = Distillation(f"{root}/flow", [DistributionMatching(fake_updates=2)],
                         lr=1e-3)
    data = TrajectoryData(f"{root}/synvid", batch_size=2, shuffle=False)
    data.setup()
    model.bind_key_timesteps(data.dataset.timesteps.tolist())
    loader = iter(data.train_dataloader())
    return model, [next(loader) for _ in range(2)]


def _train_dmd(model, batches, step, summon) -> dict:
    """Global steps 0 (student and fake score) and 1 (fake score only, k = 2), as Lightning runs them: the losses,
    gradients after ``on_before_optimizer_step`` and the final weights of every trained part."""
    import contextlib

    model.log = lambda *a, **k: None
    model.log_dict = lambda *a, **k: None
    optimizer = model.configure_optimizers()
    trained = ("student.", "objectives.")
    out = {"loss": [], "grads": [], "weights": []}
    for i, batch in enumerate(batches):
        model.trains_student = lambda _step, i=i: i % 2 == 0  # no Trainer here: global step i
        torch.manual_seed(100 + i)
        loss = step(batch)
        loss.backward()
        model.on_before_optimizer_step(optimizer)
        with summon(with_grads=True) if summon else contextlib.nullcontext():
            out["grads"].append({n.replace("_fsdp_wrapped_module.", ""): p.grad.clone()
                                 for n, p in model.named_parameters() if n.startswith(trained) and p.grad is not None})
        out["loss"].append(loss.detach())
        optimizer.step()
        optimizer.zero_grad()
        with summon() if summon else contextlib.nullcontext():
            out["weights"].append({k: v.detach().clone() for k, v in model.state_dict().items()
                                   if k.startswith(trained)})
    return out


def _fsdp_dmd_rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    strategy = strategy_from_fragment("fsdp")
    model, batches = _dmd_mix(root)
    sharded = FSDP(TrainingStep(model), device_id=torch.device("cpu"), sharding_strategy=strategy.sharding_strategy,
                   **strategy.kwargs)
    result = _train_dmd(model, batches, sharded, summon=functools.partial(FSDP.summon_full_params, sharded))
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_dmd_under_the_fsdp_sharded_step_equals_the_unsharded_one(tiny_world, tmp_path):
    """DMD2, fake score in its own group: a student step and a fake-only step sharded on 2 CPU processes give the
    unsharded losses, gradients and weights; the fake-only step leaves the student's weights as they were. (Not the
    GAN term: its generator half runs the fake score with detached parameters through ``torch.func.functional_call``,
    which FSDP's flat-parameter views refuse in the backward.)"""
    out = tmp_path / "fsdp_dmd.pt"
    spawn_two(_fsdp_dmd_rank, str(tiny_world), str(out))
    got = torch.load(out, weights_only=True)
    model, batches = _dmd_mix(str(tiny_world))
    plain = _train_dmd(model, batches, TrainingStep(model), summon=None)
    for i in range(2):
        torch.testing.assert_close(got["loss"][i], plain["loss"][i], rtol=0, atol=0)
        assert got["grads"][i].keys() >= plain["grads"][i].keys() and plain["grads"][i]
        assert any(k.startswith("student.") for k in plain["grads"][i]) == (i == 0)
        for key in got["grads"][i].keys() - plain["grads"][i].keys():  # summon_full_params shows a dropped
            assert i == 1 and not got["grads"][i][key].any(), key      # gradient of a shared unit as zeros
        for key, grad in plain["grads"][i].items():
            torch.testing.assert_close(got["grads"][i][key], grad, rtol=0, atol=0, msg=f"step {i}: {key}")
        for key, value in plain["weights"][i].items():
            torch.testing.assert_close(got["weights"][i][key], value, rtol=0, atol=0, msg=f"step {i}: {key}")
    for run in (got, plain):
        for key, value in run["weights"][0].items():
            if key.startswith("student."):
                assert torch.equal(run["weights"][1][key], value), key


# -- DMD2 under DeepSpeed ZeRO: the fake-only step holds the student still ------------------------------------------
def _deepspeed_dmd_rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    """Lightning's DeepSpeed sequence by hand (Lightning starts DeepSpeed on GPUs only): the engine's forward runs
    ``training_step``, ``engine.backward``, the module's ``on_before_optimizer_step`` with ZeRO's optimizer (what
    Lightning passes it), ``engine.step``; ZeRO-2 then ZeRO-3, each from the fragment's own config."""
    import deepspeed
    import torch.distributed as dist

    # DeepSpeed compiles a shared-memory all-reduce kernel for CPU ranks at start-up (~50 s once per machine); gloo
    # does the same reduction without it
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}
    for name in ("deepspeed_zero2", "deepspeed_zero3"):
        model, batches = _dmd_mix(root)
        config = {**strategy_from_fragment(name).config, "train_micro_batch_size_per_gpu": 2}
        engine, optimizer, _, _ = deepspeed.initialize(model=TrainingStep(model), config=config,
                                                       optimizer=model.configure_optimizers())
        model.log = model.log_dict = lambda *a, **k: None
        gather = (functools.partial(deepspeed.zero.GatheredParameters, list(model.parameters()))
                  if name.endswith("3") else contextlib.nullcontext)
        run = {"weights": [], "student_state": []}
        for i, batch in enumerate(batches):
            model.trains_student = lambda _step, i=i: i % 2 == 0
            torch.manual_seed(100 + i)
            engine.backward(engine(batch))
            model.on_before_optimizer_step(optimizer)
            engine.step()
            with gather():
                run["weights"].append({k: v.detach().clone() for k, v in model.state_dict().items()
                                       if k.startswith(("student.", "objectives."))})
            student = next(g for g in optimizer.param_groups if g["name"] == "student")
            run["student_state"].append([{k: v.clone() for k, v in optimizer.optimizer.state[p].items()}
                                         for p in student["params"]])  # ZeRO's fp32 partitions of the student
        results[name] = run
        engine.destroy()
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_dmd_under_deepspeed_zero_leaves_the_student_untouched_on_fake_only_steps(tiny_world, tmp_path):
    """ZeRO steps one flat fp32 partition per group, with zeros where a parameter had no gradient, so a plain AdamW
    would move the student on a fake-only step by its momentum and weight decay. Held still, its weights and its
    partition's AdamW state come out of step 1 as step 0 left them, while the fake score trains; the weights equal
    the unsharded run's (ZeRO-2 bit for bit; ZeRO-3 reduces in another order: measured 25 and 55 of 52,646 elements
    off by more than 1e-6 after steps 0 and 1, none by more than 2 learning rates a step)."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "deepspeed_dmd.pt"
    spawn_two(_deepspeed_dmd_rank, str(tiny_world), str(out))
    got = torch.load(out, weights_only=True)
    model, batches = _dmd_mix(str(tiny_world))
    plain = _train_dmd(model, batches, TrainingStep(model), summon=None)
    for name, run in got.items():
        before, after = run["weights"]
        for key in (k for k in before if k.startswith("student.")):
            assert torch.equal(after[key], before[key]), f"{name}: {key} moved on the fake-only step"
        assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("objectives.0.fake_score."))
        for state_0, state_1 in zip(*run["student_state"]):
            assert state_0.keys() == state_1.keys() == {"step", "exp_avg", "exp_avg_sq"}
            for key in state_0:
                assert torch.equal(state_0[key], state_1[key]), f"{name}: AdamW {key} of the student moved"
        for i in range(2):
            if name.endswith("2"):
                for key, value in plain["weights"][i].items():
                    torch.testing.assert_close(run["weights"][i][key], value, rtol=0, atol=0, msg=f"{name} {i}: {key}")
                continue
            # ZeRO-3: where a gradient is about zero (a bias before a norm) its sign can flip, and AdamW's first steps
            # move a weight by about +/- lr whatever the gradient's size: a few elements differ by up to 2 lr a step
            diff = torch.cat([(run["weights"][i][k] - v).abs().flatten() for k, v in plain["weights"][i].items()])
            assert diff.max() <= 2 * model.hparams.lr * (i + 1) and (diff > 1e-6).float().mean() < 0.005, name
