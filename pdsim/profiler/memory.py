"""Activation/workspace peak of a forward pass at max_num_batched_tokens.

What the engine must keep free of KV cache: the peak of memory allocated during the forward of
one step of `tokens` new tokens, minus what existed before it (weights, KV cache, inputs).

- CUDA: the caching allocator's own statistics (`max_memory_allocated` minus the allocated
  bytes before the forward), which include kernel workspaces.
- CPU: torch keeps no allocation statistics, so the forward runs under a dispatch mode that
  sees every tensor an op returns. A storage is counted live from the first op that returns it
  until the last Python tensor referring to it is garbage (weakref finalizers, reference
  counted per storage so views keep their base alive); the peak of the live sum is reported.
  Temporaries that a kernel allocates and frees inside one op (e.g. SDPA's scratch) are not
  visible this way, so on the CPU the number is a slight underestimate.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pdsim.profiler.elementwise import EAGER
from pdsim.profiler.model import RandomModel, StepInputs, forward, prefill_inputs


class _LiveBytes(TorchDispatchMode):
    def __init__(self, preexisting: set[int]) -> None:
        super().__init__()
        self.external = preexisting  # storages that existed before the forward: not activations
        self.refs: dict[int, int] = {}
        self.nbytes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr in self.external or size == 0:
            return
        if ptr not in self.refs:
            self.refs[ptr] = 0
            self.nbytes[ptr] = size
            self.live += size
            self.peak = max(self.peak, self.live)
        self.refs[ptr] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            del self.refs[ptr]
            self.live -= self.nbytes.pop(ptr)


def _storages(m: RandomModel, step: StepInputs) -> set[int]:
    tensors: list[torch.Tensor] = [step.ids, step.positions, step.last_token_idx, m.rope.cos, m.rope.sin]
    for w in [*m.layers, m.head]:
        tensors += [t for t in vars(w).values() if isinstance(t, torch.Tensor)]
    for cache in step.caches:
        tensors += [cache.k, cache.v]
    return {t.untyped_storage().data_ptr() for t in tensors}


def activation_peak_bytes(m: RandomModel, tokens: int) -> int:
    """Peak activation bytes of a prefill forward of `tokens` new tokens (one request)."""
    step = prefill_inputs(m, tokens)
    if m.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward(m, step)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    tracker = _LiveBytes(_storages(m, step))
    # torch.compile cannot trace under a dispatch mode: the eager ops stand in for compiled ones
    # (their fp32 temporaries make the figure an upper bound then)
    compiled, m.ew = m.ew, EAGER
    try:
        with tracker:
            forward(m, step)
    finally:
        m.ew = compiled
    return int(tracker.peak)
