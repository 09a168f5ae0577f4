"""FLOPs by part and live activation bytes of whatever runs under one dispatch mode, on the meta device.

FLOPs are torch's own formulas (the registry of ``torch.utils.flop_counter.FlopCounterMode``, plus the CPU flash
attention kernel the trace runs, which torch does not count). Each op is charged to a PART (teacher, student, fake
score, ...): in the forward, the innermost part module whose forward is running (module hooks); in the backward, the
part whose forward created the autograd node being run (its sequence number falls in the span of sequence numbers
the part's forward used), which also charges an activation-checkpointing recompute to the part it recomputes.

Why not ``FlopCounterMode``'s own per-module counts: its module tracker hooks the inputs and outputs of EVERY module
with multi-gradient hooks that hold gradients until all have arrived (hundreds of GiB of extra live tensors in a
real-size step), and it renames nested modules by class path, so two denoisers of one class cannot be told apart.
"""

from __future__ import annotations

import functools
import weakref
from collections import defaultdict

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

OTHER = "other"


def _flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: torch counts the CUDA attention kernels but not the CPU flash kernel the trace runs (:class:`flash_attention`)
FLASH_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_flops,
               torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_backward_flops}


def flop_formulas() -> dict:
    """torch's FLOP formula of each counted op (by overload packet), with :data:`FLASH_FLOPS` added."""
    return FlopCounterMode(display=False, custom_mapping=FLASH_FLOPS).flop_registry


class flash_attention:
    """Run ``F.scaled_dot_product_attention`` on the meta device as torch's CPU flash kernel: there torch picks the
    math kernel, which materialises the ``L x L`` attention matrix that a GPU's flash / memory-efficient kernels never
    hold (hundreds of GiB at 32k tokens). Same FLOPs, the memory a GPU run has. A mask (HunyuanVideo's text padding)
    is dropped: the memory-efficient kernel a GPU runs it with holds no ``L x L`` matrix either, and the FLOPs of
    the dense product are the same; the mask itself was made, and counted, before the call."""

    def __enter__(self):
        import torch.nn.functional as F

        self.original = original = F.scaled_dot_product_attention

        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            if query.device.type != "meta":
                return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                scale=scale, enable_gqa=enable_gqa)
            if enable_gqa and key.shape[-3] != query.shape[-3]:
                rep = query.shape[-3] // key.shape[-3]
                key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, dropout_p, is_causal, scale=scale)[0]

        F.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc) -> None:
        import torch.nn.functional as F

        F.scaled_dot_product_attention = self.original


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


class StepCounter(TorchDispatchMode):
    """FLOPs by part and the bytes of live activations of the ops run under it.

    Args:
        parts: part name -> its top modules (disjoint); ops outside all of them count as :data:`OTHER`.
        exclude: tensors whose storages are not activations (parameters, buffers).
        memory: follow the live bytes (False: FLOPs only, faster).

    ``flops[phase][part]``: FLOPs, ``phase`` ``forward`` or ``backward``. ``live`` / ``peak``: bytes of the storages
    the ops created that are still referenced, now and at most, each storage counted once (views share it) until its
    last tensor dies (torch keeps a tensor's Python object alive as long as autograd holds the tensor); gradients
    accumulated into parameters leave the count when their hook fires (:meth:`watch_grads`).
    """

    def __init__(self, parts: dict[str, list[nn.Module]] | None = None, exclude: list[Tensor] = (),
                 memory: bool = True) -> None:
        super().__init__()
        self.formulas = flop_formulas()
        self.flops: dict[str, dict[str, int]] = {"forward": defaultdict(int), "backward": defaultdict(int)}
        self.memory = memory
        self.excluded = {self._key(t) for t in exclude}
        self.refs: dict[int, list] = {}  # storage key -> [live tensors, bytes]
        self.live = 0
        self.peak = 0
        self.stack: list[tuple[str, int]] = []  # (part, sequence number at its forward's start)
        self.spans: list[tuple[int, int, str]] = []  # sequence numbers [start, end) of a part's forward
        self.node_parts: dict[int, str] = {}
        self.handles = []
        for name, modules in (parts or {}).items():
            for m in modules:
                self.handles.append(m.register_forward_pre_hook(functools.partial(self._enter, name)))
                self.handles.append(m.register_forward_hook(functools.partial(self._exit, name), always_call=True))

    @staticmethod
    def _key(t: Tensor) -> int:
        return StorageWeakRef(t.untyped_storage()).cdata

    # -- parts ---------------------------------------------------------------------------------------------
    def _enter(self, name: str, *_args) -> None:
        if not _in_backward():
            self.stack.append((name, torch._C._autograd._get_sequence_nr()))

    def _exit(self, name: str, *_args) -> None:
        if not _in_backward() and self.stack:
            part, start = self.stack.pop()
            self.spans.append((start, torch._C._autograd._get_sequence_nr(), part))

    def part(self) -> str:
        if not _in_backward():
            return self.stack[-1][0] if self.stack else OTHER
        node = torch._C._current_autograd_node()
        if node is None:
            return OTHER
        seq = node._sequence_nr()
        part = self.node_parts.get(seq)
        if part is None:  # the innermost span: nested spans start later
            part = next((p for s, e, p in sorted(self.spans, reverse=True) if s <= seq < e), OTHER)
            self.node_parts[seq] = part
        return part

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    # -- memory --------------------------------------------------------------------------------------------
    def watch_grads(self, params: list[nn.Parameter]) -> list:
        """Hooks that take each trained parameter's gradient out of the activation count once it is accumulated."""
        return [p.register_post_accumulate_grad_hook(lambda q: self._forget(q.grad)) for p in params]

    def _forget(self, grad: Tensor | None) -> None:
        if grad is not None:
            key = self._key(grad)
            entry = self.refs.pop(key, None)
            if entry is not None:
                self.live -= entry[1]
            self.excluded.add(key)

    def _release(self, key: int, _ref=None) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            # a meta tensor has no value: read it as one (True), so a library's data-dependent branch (transformers'
            # "is the padding mask all ones?") takes its unmasked path: the cost of full-length prompts
            return True if args[0].dtype == torch.bool else 1
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            phase = "backward" if _in_backward() else "forward"
            self.flops[phase][self.part()] += formula(*args, **kwargs, out_val=out)
        if not self.memory:
            return out
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            key = self._key(t)
            if key in self.excluded:
                continue
            entry = self.refs.get(key)
            if entry is None:
                entry = self.refs[key] = [0, t.untyped_storage().nbytes()]
                self.live += entry[1]
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        if self.live > self.peak:
            self.peak = self.live
        return out

    def total(self, phase: str | None = None) -> int:
        phases = [phase] if phase else list(self.flops)
        return sum(v for p in phases for v in self.flops[p].values())


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)``."""
    counter = StepCounter(memory=False)
    with counter:
        fn(*args, **kwargs)
    return counter.total()
