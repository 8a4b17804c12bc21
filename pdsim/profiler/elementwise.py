"""The elementwise ops of a layer (RMSNorm, Qwen3's q/k norm, rotary, SiLU-and-mul, residual
add), launched eagerly or compiled.

vLLM runs its model under torch.compile, and with Inductor it turns its own CUDA ops off by
default, so RMSNorm, SiluAndMul and RotaryEmbedding run their plain PyTorch code
(`forward_native`) fused by Inductor into a Triton kernel or two each. Eager PyTorch launches
one kernel per arithmetic op instead (a neox rotary of q and k is 16 kernels), so on a GPU the
eager ops cost several times what the engine pays, and most of a small decode step. On CUDA with
Triton the profiler compiles the same functions the same way (`auto`); on the CPU, or when
compiling fails, they run eagerly and meta.json says which was used.

Compiled as vLLM compiles them in two respects that decide the kernels' speed:
- only the token dimension is dynamic (vLLM's `support_torch_compile` marks dim 0 of its inputs);
  hidden and head sizes stay static, so Inductor can pick a reduction kernel for them;
- the residual add is done inside the next RMSNorm (vLLM's Llama/Qwen layers call
  `norm(x, residual)`, `RMSNorm.forward_static` with a residual), one fused kernel, so a compiled
  profile's `layernorm` is that fused add + norm and it has no separate `residual_add`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from pdsim.profiler import ops
from pdsim.profiler.ops import HeadWeights, LayerWeights, Rope

Tensor = torch.Tensor


@dataclass(frozen=True)
class Elementwise:
    name: str  # "eager" | "torch.compile (inductor)"
    rms_norm: Callable[[Tensor, Tensor], Tensor]
    qk_rms_norm: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    rotary: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    silu_and_mul: Callable[[Tensor], Tensor]
    add: Callable[[Tensor, Tensor], Tensor]
    add_rms_norm: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    fused_residual: bool = False  # add_rms_norm is one kernel: no separate residual_add op
    note: str = ""  # why `auto` fell back to eager, if it did

    # The op names of the profile format, over the layer's weight structures.
    def layernorm(self, x: Tensor, weight: Tensor) -> Tensor:
        return self.rms_norm(x, weight)

    def add_layernorm(self, x: Tensor, residual: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(RMSNorm(x + residual), x + residual): the norm after a residual add, as vLLM calls it."""
        return self.add_rms_norm(x, residual, weight)

    def qk_norm(self, q: Tensor, k: Tensor, w: LayerWeights) -> tuple[Tensor, Tensor]:
        return self.qk_rms_norm(q, k, w.q_norm, w.k_norm)

    def rotary_emb(self, q: Tensor, k: Tensor, positions: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        return self.rotary(q, k, positions, rope.cos, rope.sin)

    def act_fn(self, gate_up: Tensor) -> Tensor:
        return self.silu_and_mul(gate_up)

    def residual_add(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.add(x, residual)

    def final_layernorm(self, x: Tensor, w: HeadWeights) -> Tensor:
        return self.rms_norm(x, w.final_norm)


def _add_rms_norm_eager(x: Tensor, residual: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    x = ops.residual_add(x, residual)
    return ops.layernorm(x, weight), x


EAGER = Elementwise("eager", ops.layernorm, ops.qk_rms_norm, ops.rotary, ops.act_fn, ops.residual_add,
                    _add_rms_norm_eager)


def _rms_norm_native(x: Tensor, weight: Tensor) -> Tensor:
    """vLLM's RMSNorm.forward_native: in float32, then scaled in the input dtype."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + ops.RMS_EPS)
    return x.to(dtype) * weight


def _add_rms_norm_native(x: Tensor, residual: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """vLLM's RMSNorm.forward_static with a residual: the add in float32, kept in the input dtype."""
    dtype = x.dtype
    x = x.float() + residual
    residual = x.to(dtype)
    x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + ops.RMS_EPS)
    return x.to(dtype) * weight, residual


def _qk_rms_norm_native(q: Tensor, k: Tensor, q_norm: Tensor, k_norm: Tensor) -> tuple[Tensor, Tensor]:
    return _rms_norm_native(q, q_norm), _rms_norm_native(k, k_norm)


def _compiled() -> Elementwise:
    def compile_(fn: Callable, token_args: int) -> Callable:
        # dynamic=False: static shapes, except the dims marked below (a later call with another
        # hidden size recompiles for it instead of turning that dim dynamic)
        compiled = torch.compile(fn, fullgraph=True, dynamic=False)

        def call(*args: Tensor) -> object:
            for a in args[:token_args]:  # dim 0 = tokens, the only dynamic one (as vLLM marks it)
                torch._dynamo.maybe_mark_dynamic(a, 0)
            return compiled(*args)

        return call

    return Elementwise(
        "torch.compile (inductor)",
        compile_(_rms_norm_native, 1),
        compile_(_qk_rms_norm_native, 2),
        compile_(ops.rotary, 3),
        compile_(ops.act_fn, 1),
        compile_(ops.residual_add, 2),
        compile_(_add_rms_norm_native, 2),
        fused_residual=True,
    )


def _agrees(ew: Elementwise, device: str, dtype: torch.dtype) -> None:
    """Run every compiled op once on small inputs (compiling it) and compare with eager."""
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    x, r, w = rand(5, 64), rand(5, 64), rand(64)
    q, k, hw = rand(5, 4, 32), rand(5, 2, 32), rand(32)
    positions = torch.arange(5, device=device)
    cos, sin = rand(8, 16), rand(8, 16)
    pairs = [
        (ew.rms_norm(x, w), ops.layernorm(x, w)),
        (ew.qk_rms_norm(q, k, hw, hw), ops.qk_rms_norm(q, k, hw, hw)),
        (ew.rotary(q, k, positions, cos, sin), ops.rotary(q, k, positions, cos, sin)),
        (ew.silu_and_mul(rand(5, 128)), None),
        (ew.add(x, r), ops.residual_add(x, r)),
        (ew.add_rms_norm(x, r, w), _add_rms_norm_eager(x, r, w)),
    ]
    for got, want in pairs:
        if want is None:
            continue
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(a.float(), b.float(), atol=0.05, rtol=0.05)


def make_elementwise(device: str, dtype: torch.dtype, mode: str = "auto") -> Elementwise:
    """`auto`: compiled on CUDA when Triton is importable and the compiled ops agree with eager."""
    if mode == "eager" or (mode == "auto" and device != "cuda"):
        return EAGER
    try:
        if device == "cuda":
            import triton  # noqa: F401

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        ew = _compiled()
        _agrees(ew, device, dtype)
    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly, and say why
        if mode == "compiled":
            raise
        return replace(EAGER, note=f"torch.compile unavailable ({type(e).__name__}: {e})"[:300])
    return ew
