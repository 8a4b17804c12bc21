"""The grid points `pdsim profile` times: for each, a closure that builds its inputs (random
weights with the exact TP-sharded shapes, KV caches) and returns the calls to time.

Several copies of the weights or caches are made, used in turn, so that an op does not find its
operands hot in cache from the previous repeat (profiles/PROFILER.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pdsim.models import ModelSpec, dtype_bytes
from pdsim.perf.profile import LAYER_OVERHEAD_DECODE_KV, MLP_OPS
from pdsim.profiler import ops
from pdsim.profiler.attention import make_attention
from pdsim.profiler.device import last_level_cache_bytes
from pdsim.profiler.elementwise import make_elementwise
from pdsim.profiler.grid import GridSpec
from pdsim.profiler.model import decoder_layer
from pdsim.profiler.ops import LayerWeights, ShardShapes
from pdsim.profiler.progress import Progress

if TYPE_CHECKING:
    from pdsim.profiler.run import ProfileRequest

Variants = list[Callable[[], object]]


@dataclass
class Point:
    table: str  # dense | per_sequence | attention_prefill | attention_decode(_skew) | layer_forward
    op: str
    key: tuple[int, ...]
    work: float  # rough cost for the ETA
    build: Callable[[], Variants]
    # what else the timed call depends on: a layer_forward point is a decode step or a prefill by where the
    # largest decode batch lies, so the same key is another call once a memory cap lowers that
    tag: str = ""

    @property
    def ident(self) -> tuple:
        return (self.table, self.op, self.key, self.tag)



class PointBuilder:
    """Makes the closures timed at each grid point."""

    def __init__(self, model: ModelSpec, req: ProfileRequest) -> None:
        self.s = ShardShapes.of(model, req.tp)
        self.dtype = ops.torch_dtype(req.dtype)
        self.dev = req.device
        self.elem = dtype_bytes(req.dtype)
        self.flush_bytes = 2 * last_level_cache_bytes(req.device)
        self.num_layers = model.num_layers
        s = self.s
        smallest = (
            min(s.hidden * (s.q_size + 2 * s.kv_size), s.hidden * s.q_size, 2 * s.hidden * s.intermediate)
            * self.elem
        )
        n_copies = self._copies(smallest)
        # Several layers' weights, used in turn: as in a real forward pass, an op does not find
        # its weights hot in cache from the previous repeat (CPU L3 / GPU L2 would hold them).
        self.layers = [LayerWeights.random(s, self.dtype, self.dev) for _ in range(n_copies)]
        self.head = ops.HeadWeights.random(s, self.dtype, self.dev)
        self.rope = ops.Rope(s, self.dtype, self.dev, req.grid.max_tokens + req.grid.max_kv + 1)
        self.attention = make_attention(s, self.dtype, self.dev, req.attention_backend)
        self.ew = make_elementwise(self.dev, self.dtype, req.elementwise)

    def _copies(self, nbytes: int) -> int:
        return max(1, min(self.num_layers, math.ceil(self.flush_bytes / max(nbytes, 1))))

    def _x(self, tokens: int, width: int | None = None) -> torch.Tensor:
        return torch.randn(tokens, width or self.s.hidden, dtype=self.dtype, device=self.dev)

    def dense(self, op: str, t: int) -> Variants:
        s, L, ew = self.s, self.layers, self.ew
        if op == "layernorm":  # as the engine runs it: fused with the residual add where compiled
            x, r = self._x(t), self._x(t)
            if ew.fused_residual:
                return [lambda w=w: ew.add_layernorm(x, r, w.input_norm) for w in L]
            return [lambda w=w: ew.layernorm(x, w.input_norm) for w in L]
        if op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            fn = getattr(ops, op)
            x = self._x(t, s.q_size if op == "o_proj" else s.intermediate if op == "down_proj" else None)
            return [lambda w=w: fn(x, w) for w in L]
        if op in ("qk_norm", "rotary_emb"):
            q, k, _ = ops.split_qkv(self._x(t, s.q_size + 2 * s.kv_size), s)
            if op == "qk_norm":
                return [lambda w=w: ew.qk_norm(q, k, w) for w in L]
            positions = torch.arange(t, device=self.dev)
            return [lambda: ew.rotary_emb(q, k, positions, self.rope)]
        if op == "act_fn":
            x = self._x(t, 2 * s.intermediate)
            return [lambda: ew.act_fn(x)]
        if op == "residual_add":
            x, r = self._x(t), self._x(t)
            return [lambda: ew.residual_add(x, r)]
        if op == "embedding":
            ids = torch.randint(0, s.vocab_shard, (t,), device=self.dev)
            return [lambda: ops.embedding(ids, self.head)]
        if op == "final_layernorm":
            x, r = self._x(t), self._x(t)
            if ew.fused_residual:
                return [lambda: ew.add_layernorm(x, r, self.head.final_norm)]
            return [lambda: ew.final_layernorm(x, self.head)]
        raise ValueError(op)

    def layer(self, t: int, decode: bool) -> Variants:
        """One whole decoder layer of t new tokens at `layer_overhead`'s reference shape (decode:
        t sequences with LAYER_OVERHEAD_DECODE_KV cached each; else a prefill with KV prefix 0),
        rotating over the weight copies as the isolated ops do (and a full forward over its layers)."""
        x, r = self._x(t), self._x(t)  # a middle layer's input: sub-layer output and residual stream
        if decode:
            kv = LAYER_OVERHEAD_DECODE_KV
            positions = torch.full((t,), kv, device=self.dev)
            caches = [self.attention.new_cache(t, kv, 1) for _ in self.layers]
            attention = self.attention.decode
        else:
            positions = torch.arange(t, device=self.dev)
            caches = [self.attention.new_cache(1, 0, t) for _ in self.layers]
            attention = self.attention.prefill
        return [
            lambda w=w, c=c: decoder_layer(x, r, w, self.s, positions, self.rope, attention, c, self.ew)
            for w, c in zip(self.layers, caches, strict=True)
        ]

    def per_sequence(self, op: str, n: int) -> Variants:
        if op == "lm_head":
            x, idx = self._x(n), torch.arange(n, device=self.dev)
            return [lambda: ops.lm_head(x, idx, self.head)]
        logits = ops.full_vocab_logits(self.s, n, self.dtype, self.dev)
        return [lambda: ops.sampler(logits)]

    def _qkv(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.s
        return ops.split_qkv(self._x(t, s.q_size + 2 * s.kv_size), s)

    def _cache_copies(self, batch: int, cached: int, new: int) -> int:
        return self._copies(2 * batch * (cached + new) * self.s.kv_size * self.elem)

    def prefill(self, chunk: int, prefix: int) -> Variants:
        q, k, v = self._qkv(chunk)
        caches = [
            self.attention.new_cache(1, prefix, chunk) for _ in range(self._cache_copies(1, prefix, chunk))
        ]
        return [lambda c=c: self.attention.prefill(q, k, v, c) for c in caches]

    def attention_bytes(self, batch: int, cached: int, new: int) -> int:
        """Bytes `prefill` (batch 1) or `decode` (new 1) allocates at one point: q/k/v of the new tokens, its
        KV cache copies and the output (the decode skew's uneven caches are at most `decode`'s at its long KV).
        Kernel workspaces and the CUDA graph's pool are not counted: the caller leaves a margin for them."""
        s, e = self.s, self.elem
        tokens = batch * new
        cache = 2 * batch * (cached + new) * s.kv_size * e
        return tokens * (s.q_size + 2 * s.kv_size) * e + self._cache_copies(batch, cached, new) * cache + \
            tokens * s.q_size * e

    def decode(self, batch: int, kv: int) -> Variants:
        q, k, v = self._qkv(batch)
        caches = [self.attention.new_cache(batch, kv, 1) for _ in range(self._cache_copies(batch, kv, 1))]
        return [lambda c=c: self.attention.decode(q, k, v, c) for c in caches]

    def decode_uneven(self, batch: int, kv_short: int, kv_long: int) -> Variants:
        """A decode batch with one request at kv_long cached tokens and the others at kv_short."""
        q, k, v = self._qkv(batch)
        copies = self._cache_copies(batch, kv_long, 1)
        caches = [self.attention.uneven_cache(batch, kv_short, kv_long) for _ in range(copies)]
        return [lambda c=c: self.attention.decode_uneven(q, k, v, c) for c in caches]

    # FLOP estimates (only rank points for the ETA)
    def dense_flops(self, op: str, t: int) -> float:
        s = self.s
        out = {
            "qkv_proj": s.q_size + 2 * s.kv_size,
            "o_proj": s.hidden,
            "gate_up_proj": 2 * s.intermediate,
            "down_proj": s.hidden,
        }.get(op)
        inp = {"o_proj": s.q_size, "down_proj": s.intermediate}.get(op, s.hidden)
        return 2.0 * t * inp * out if out else 10.0 * t * s.hidden

    def attention_flops(self, q_tokens: int, kv_tokens: int, batch: int = 1) -> float:
        return 4.0 * batch * q_tokens * kv_tokens * self.s.q_size


def layer_points(b: PointBuilder, grid: GridSpec) -> list[Point]:
    layer_flops = sum(b.dense_flops(op, 1) for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))
    return [
        Point(
            "layer_forward",
            "layer_forward",
            (t,),
            Progress.work(t * layer_flops + b.attention_flops(t, t)),
            lambda t=t: b.layer(t, decode=t <= grid.max_batch),
            tag="decode" if t <= grid.max_batch else "prefill",
        )
        for t in grid.tokens()
    ]


def grid_points(b: PointBuilder, grid: GridSpec) -> list[Point]:
    points: list[Point] = []
    dense_ops = [op for op in (*ops.LAYER_OPS, *ops.STEP_OPS)
                 if (op != "qk_norm" or b.s.qk_norm) and (op != "residual_add" or not b.ew.fused_residual)
                 and (op not in MLP_OPS or b.s.dense_mlp)]
    for op in dense_ops:
        for t in grid.tokens():
            points.append(
                Point(
                    "dense", op, (t,), Progress.work(b.dense_flops(op, t)), lambda op=op, t=t: b.dense(op, t)
                )
            )
    for op in ops.PER_SEQUENCE_OPS:
        for n in grid.sequences():
            flops = 2.0 * n * b.s.hidden * b.s.vocab_shard if op == "lm_head" else 5.0 * n * b.s.vocab
            points.append(
                Point(
                    "per_sequence", op, (n,), Progress.work(flops), lambda op=op, n=n: b.per_sequence(op, n)
                )
            )
    for c in grid.prefill_chunks():
        for p in grid.prefill_prefixes():
            points.append(
                Point(
                    "attention_prefill",
                    "attention_prefill",
                    (c, p),
                    Progress.work(b.attention_flops(c, p + c)),
                    lambda c=c, p=p: b.prefill(c, p),
                )
            )
    for n in grid.decode_batches():
        for kv in grid.decode_kv():
            points.append(
                Point(
                    "attention_decode",
                    "attention_decode",
                    (n, kv),
                    Progress.work(b.attention_flops(1, kv + 1, n)),
                    lambda n=n, kv=kv: b.decode(n, kv),
                )
            )
    return points + decode_skew_points(b, grid) + layer_points(b, grid)


def decode_skew_points(b: PointBuilder, grid: GridSpec) -> list[Point]:
    """The uneven decode batches (GridSpec.decode_skew) the decode skew is derived from."""
    return [
        Point(
            "attention_decode_skew",
            "attention_decode_skew",
            (n, short, long),
            Progress.work(b.attention_flops(1, long + 1 + (n - 1) * (short + 1))),
            lambda n=n, short=short, long=long: b.decode_uneven(n, short, long),
        )
        for n, short, long in grid.decode_skew()
    ]
