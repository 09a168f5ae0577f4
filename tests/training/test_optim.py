"""``HoldingAdamW`` against torch's AdamW: held groups do not move at all, the others step as torch steps them."""

from __future__ import annotations

import torch

from vdistill.training.optim import HoldingAdamW


def two_groups(adamw: type, seed: int = 0):
    torch.manual_seed(seed)
    student, side = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)
    opt = adamw([{"params": student.parameters(), "name": "student"},
                 {"params": side.parameters(), "name": "side", "lr": 3e-2}], lr=1e-2, weight_decay=0.1)
    return student, side, opt


def loss_of(student, side, i: int) -> torch.Tensor:
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(i))
    return side(student(x)).pow(2).mean()


def snapshot(module, opt) -> tuple[list, list]:
    return ([p.detach().clone() for p in module.parameters()],
            [{k: v.clone() for k, v in opt.state[p].items()} for p in module.parameters()])


def test_a_held_group_keeps_weights_and_state_while_the_others_step_as_torch_adamw():
    """Steps 0, 2 update both groups, step 1 holds the student; a torch AdamW over the side group alone (with the
    same gradients) and over both (steps 0 and 2 only, for the student) gives the same numbers bit for bit."""
    student, side, opt = two_groups(HoldingAdamW)
    ref_student, ref_side, ref = two_groups(torch.optim.AdamW)
    for i in range(3):
        hold = i == 1
        for group in opt.param_groups:
            group["hold"] = hold and group["name"] == "student"
        before = snapshot(student, opt)
        opt.zero_grad()
        loss_of(student, side, i).backward()
        opt.step()
        ref.zero_grad()
        loss_of(ref_student, ref_side, i).backward()
        if hold:  # torch skips parameters without a gradient: the reference of a held student
            for p in ref_student.parameters():
                p.grad = None
        ref.step()
        if hold:
            after = snapshot(student, opt)
            assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
            assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                       for a, b in zip(before[1], after[1]))
            assert all(p.grad is not None for p in student.parameters())  # set aside, then put back
        for mine, theirs in zip([*student.parameters(), *side.parameters()],
                                [*ref_student.parameters(), *ref_side.parameters()]):
            assert torch.equal(mine, theirs)
            assert all(torch.equal(opt.state[mine][k], ref.state[theirs][k]) for k in opt.state[mine])
    assert int(opt.state[next(student.parameters())]["step"]) == 2
    assert int(opt.state[next(side.parameters())]["step"]) == 3


def test_flags_set_inside_the_closure_count():
    """Lightning runs the backward and ``on_before_optimizer_step`` (where the module sets ``hold``) inside the
    closure it passes to ``step``: the flags are read after it."""
    student, side, opt = two_groups(HoldingAdamW)
    opt.zero_grad()
    loss_of(student, side, 0).backward()
    opt.step()
    weights = [p.detach().clone() for p in student.parameters()]

    def closure():
        opt.zero_grad()
        loss = loss_of(student, side, 1)
        loss.backward()
        opt.param_groups[0]["hold"] = True
        return loss

    loss = opt.step(closure)
    assert torch.isfinite(loss)
    assert all(torch.equal(a, b) for a, b in zip(weights, student.parameters()))
