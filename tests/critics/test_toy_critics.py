"""The toy critics: build, score with gradients, strict safetensors loading, contrastive training, the report."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from vdistill.critics import load_critic, toy
from vdistill.critics import report as report_mod
from vdistill.data.toy import ToyVideos
from vdistill.errors import UserError
from vdistill.modules.critic_training import CriticTraining, caption_labels, multi_positive_infonce
from vdistill.world.captions import parse_caption
from vdistill.world.render import WorldConfig

NAMES = ["toy-image", "toy-video"]
PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]
SMALL = WorldConfig(num_frames=4, size=8)


@pytest.fixture(params=NAMES)
def critic(request):
    torch.manual_seed(0)
    return load_critic(request.param, size="tiny", num_frames=4)


def test_tokenizer_ends_with_highest_id_and_maps_unknown_words():
    tok = toy.WordTokenizer(context_length=8)
    ids = tok(["a red circle moving left", "A purple blob!", "a red circle moving left very very fast"])
    eot = tok.index["<eot>"]
    assert eot == tok.vocab_size - 1 and ids.shape == (3, 8)
    assert ids[0, :7].tolist() == [tok.index["<sot>"], *(tok.index[w] for w in "a red circle moving left".split()),
                                   eot]
    assert ids[1, 2].item() == tok.index["<unk>"] and ids[1, 3].item() == tok.index["<unk>"]
    assert ids[2, -1].item() == eot and (ids.argmax(1) == torch.tensor([6, 4, 7])).all()  # pooled at <eot>


def test_scores_are_cosines_differentiable_and_frozen(critic):
    videos = torch.rand(3, 4, 3, 8, 8, requires_grad=True)
    s = critic(videos, PROMPTS)
    assert s.shape == (3,) and (s.abs() <= 1 + 1e-5).all()
    s.sum().backward()
    assert videos.grad.abs().sum() > 0 and all(p.grad is None for p in critic.parameters())
    assert not any(p.requires_grad for p in critic.parameters()) and not critic.training
    text = critic.embed_text(PROMPTS)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    if critic.kind == "video":  # T == frames: every frame, in order, so the score is the cosine itself
        torch.testing.assert_close(s.detach(), (critic.embed_video(videos.detach()) * text).sum(-1))


def test_other_video_sizes_are_resized(critic):
    assert critic(torch.rand(2, 8, 3, 16, 20), PROMPTS[:2]).isfinite().all()


@pytest.mark.parametrize("name", NAMES)
def test_save_and_strict_load_round_trip(tmp_path, name):
    torch.manual_seed(1)
    critic = load_critic(name, size="tiny", num_frames=4)
    path = toy.save_toy_critic(critic, tmp_path / f"{name}.safetensors")
    loaded = load_critic(name, checkpoint=path, num_frames=4)  # the size comes from the file's metadata
    assert loaded.cfg == toy.TOY_SIZES["tiny"]
    videos = torch.rand(2, 4, 3, 8, 8)
    torch.testing.assert_close(loaded(videos, PROMPTS[:2]), critic(videos, PROMPTS[:2]))


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_file_lists_keys(tmp_path, name):
    state = dict(load_critic(name, size="tiny").model.state_dict())
    key = next(k for k in state if k.endswith(".weight"))
    state[key + "z"] = state.pop(key)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match=rf"missing keys \(1\) \[{key}\]; unexpected keys \(1\) \[{key}z\]"):
        load_critic(name, checkpoint=tmp_path / "bad.safetensors", size="tiny")


def test_wrong_critic_and_missing_files_are_user_errors(tmp_path, monkeypatch):
    path = toy.save_toy_critic(load_critic("toy-image", size="tiny"), tmp_path / "img.safetensors")
    with pytest.raises(UserError, match="holds toy-image weights, not toy-video"):
        load_critic("toy-video", checkpoint=path)
    with pytest.raises(UserError, match="not found"):
        load_critic("toy-video", checkpoint=tmp_path / "nope.safetensors")
    monkeypatch.setitem(toy.SHIPPED_CRITICS, "toy-video", tmp_path / "absent.safetensors")
    with pytest.raises(UserError, match=r"shipped toy-video weights are missing.*experiments/toy/critics/critics.yaml"):
        load_critic("toy-video", checkpoint="shipped")
    monkeypatch.setitem(toy.SHIPPED_CRITICS, "toy-image", path)
    assert load_critic("toy-image", checkpoint="shipped").cfg == toy.TOY_SIZES["tiny"]


def test_infonce_is_clip_loss_without_duplicates_and_ignores_them_as_negatives():
    torch.manual_seed(0)
    emb, text = (torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(2))
    logits = 10 * emb @ text.T
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(4))
            + torch.nn.functional.cross_entropy(logits.T, torch.arange(4))) / 2
    torch.testing.assert_close(multi_positive_infonce(emb, text, torch.arange(4), 10.0), clip)
    # two videos of one caption that both match it perfectly: no penalty for being alike
    distinct, labels = caption_labels(["x", "y", "x"])
    assert distinct == ["x", "y"] and labels.tolist() == [0, 1, 0]
    perfect = torch.eye(2)[labels]
    assert multi_positive_infonce(perfect, torch.eye(2), labels, 100.0) < 1e-3


def test_training_smoke_loss_decreases_and_exports(tmp_path):
    L.seed_everything(0)
    # the shipped size (260K parameters each) on a reduced world: the tiny size tends to collapse at first
    model = CriticTraining(critic_size="default", lr=1e-3, warmup_steps=5, export_dir=str(tmp_path / "export"))
    data = ToyVideos(batch_size=16, num_frames=4, size=8, samples_per_epoch=16 * 30)
    fixed = next(iter(data._fixed(seed=123, n=64)))  # same 64 videos before and after

    def losses() -> dict[str, float]:
        with torch.no_grad():
            return {n: model.contrastive_loss(c, *fixed).item() for n, c in model.critics.items()}

    torch.manual_seed(0)
    before = losses()
    # a real logger: its hparams merge with the datamodule's (both once had a `size`: fit failed at start)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path / "logs")
    trainer = L.Trainer(max_steps=30, accelerator="cpu", logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    torch.manual_seed(0)
    after = losses()
    # measured: toy-image 2.97 -> 1.69 (and it reads colour), toy-video 2.74 -> 2.38 (it takes ~200 steps more)
    assert report_mod.caption_ranking(model.critics["toy-image"], *fixed)["colour"] > 0.5
    for name in NAMES:
        assert after[name] < before[name] - 0.2, (before, after)
        loaded = load_critic(name, checkpoint=tmp_path / "export" / f"{name}.safetensors")
        assert not any(p.requires_grad for p in loaded.parameters())
    assert {"train/toy-image/loss", "train/toy-video/logit_scale"} <= set(trainer.callback_metrics)


def test_critic_training_rejects_other_critics():
    with pytest.raises(UserError, match="CriticTraining trains"):
        CriticTraining(critics=("hpsv2",), critic_size="tiny")


def test_report_on_a_tiny_critic(critic):
    videos, prompts = report_mod.real_videos(per_caption=1, world=SMALL)
    assert videos.shape == (48, 4, 3, 8, 8) and len(set(prompts)) == 48
    rep = report_mod.critic_report(critic, videos, prompts, samples={"same": (videos[:8], prompts[:8])})
    rank = rep["ranking"]
    assert rank["n"] == 48 and all(0 <= rank[k] <= 1 for k in ("accuracy", "visible_accuracy", "colour", "motion"))
    for agreement in rep["agreement"].values():
        assert set(agreement) == {"pearson", "spearman", "mean_score", "mean_semantic", "n"}


def test_perturbed_prompts_change_zero_to_three_attributes():
    prompts = ["a red circle moving left"] * 200
    changed = [sum(getattr(parse_caption(p), a) != getattr(parse_caption(q), a) for a in ("colour", "shape", "motion"))
               for p, q in zip(prompts, report_mod.perturbed_prompts(prompts))]
    assert set(changed) == {0, 1, 2, 3}


def test_correlations_rank_ties_at_their_average():
    """Spearman's rho is Pearson's r of the ranks, tied scores sharing their average rank (2.5 here); a constant
    vector has no correlation."""
    import numpy as np

    scores, target = np.array([3.0, 1.0, 3.0, 2.0]), np.array([0.0, 1.0, 1.0, 0.5])
    ranks = np.array([2.5, 0.0, 2.5, 1.0]), np.array([0.0, 2.5, 2.5, 1.0])
    got = report_mod.correlations(scores, target)
    assert got["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1])
    assert got["pearson"] == pytest.approx(np.corrcoef(scores, target)[0, 1])
    assert np.isnan(report_mod.correlations(scores, np.ones(4))["spearman"])


def test_report_command(tmp_path, capsys, monkeypatch):
    path = toy.save_toy_critic(load_critic("toy-video", size="tiny"), tmp_path / "v.safetensors")
    from vdistill.commands import critic_report

    real = report_mod.real_videos
    monkeypatch.setattr(critic_report, "real_videos", lambda n: real(n, world=SMALL))  # 8x8 videos: quick
    critic_report.run(["--critic", "toy-video", "--checkpoint", str(path), "--per-caption", "1",
                       "--json", str(tmp_path / "r.json")])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "r.json").read_text()) and printed["ranking"]["n"] == 48



def test_recipe_runs_through_the_cli(tmp_path, monkeypatch):
    from pathlib import Path

    from vdistill.cli import main

    config = Path(__file__).resolve().parents[2] / "experiments/toy/critics/critics.yaml"
    monkeypatch.chdir(tmp_path)  # the recipe writes under runs/
    monkeypatch.setattr("sys.argv", ["vdistill", "fit", "--config", str(config), "--trainer.max_steps", "2",
                                     "--trainer.logger", "false", "--model.init_args.critic_size", "tiny",
                                     "--data.init_args.batch_size", "4", "--data.init_args.samples_per_epoch", "8",
                                     "--data.init_args.val_samples", "4"])
    main()
    for name in NAMES:
        critic = load_critic(name, checkpoint=tmp_path / f"runs/toy/critics/export/{name}.safetensors")
        assert critic.cfg == toy.TOY_SIZES["tiny"]
    assert (tmp_path / "runs/toy/critics/checkpoints/last.ckpt").is_file()
