"""What the scheduler decided for the next step(s), and what came out of running them."""

from __future__ import annotations

from dataclasses import dataclass, field

from pdsim.engine.request import Request


@dataclass(slots=True)
class StepPlan:
    prefill: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens this step)
    prefill_prefix: list[int] = field(default_factory=list)  # KV tokens each chunk attends to before it
    n_decode: int = 0
    n_ghosts: int = 0  # of n_decode, ghost decodes (scheduler.Finishing): computed, but no token to anyone
    kv_decode_sum: int = 0
    kv_decode_max: int = 0  # the longest decode KV: uneven batches cost more than their mean says
    max_steps: int = 1  # how many decode steps may run back to back without a scheduling decision
    fresh_decoders: list[Request] = field(default_factory=list)  # joined with a gap since their last token

    @property
    def empty(self) -> bool:
        return not self.prefill and self.n_decode == 0

    @property
    def chunks(self) -> tuple[tuple[int, int], ...]:
        """The prefill chunks as the step-time model takes them: (new tokens, cached prefix) each."""
        return tuple((num_new, prefix) for (_, num_new), prefix in zip(self.prefill, self.prefill_prefix))


@dataclass(slots=True)
class StepOutcome:
    finished: list[Request] = field(default_factory=list)
    gap_itls_s: list[float] = field(default_factory=list)  # token gaps longer than one step (after a recompute)
    handoffs: list[Request] = field(default_factory=list)  # prefill done on a prefill-only instance
    prompt_tokens: int = 0
    decode_tokens: int = 0
    # Decodes the plan counted whose token was dropped: sampled for a request that had finished (or left the
    # instance) meanwhile, as vLLM drops a finished request's output (a pipeline's second step in flight).
    dropped_decodes: list[Request] = field(default_factory=list)
