"""A MoE data-parallel group whose ranks are pipelined (pp_size > 1).

Each DP rank is a vLLM engine with its own batch queue of pp_size micro-batches; a MoE layer is a
collective over the group's ranks in the same pipeline stage, so the ranks' k-th micro-batches go
through every stage together, an idle rank supplying a dummy batch of one token (vLLM's
execute_dummy_batch), as pdsim/engine/dp_group.py does for unpipelined groups, waves included. A group
micro-batch holds each stage for the slowest rank's own part of that stage (attention, dense
ops, sampling on the last stage) plus the stage's MoE layers at the group's token count (their router
gate and shared experts at the busiest rank's); the activation send is that of the rank with the most tokens.
The ranks pad their batches to a CUDA-graph capture size as an unpipelined group's do (dp_group.py).
"""

from __future__ import annotations

from pdsim.engine.dp_group import DPGroup


class PipelineDPGroup(DPGroup):
    def _price(self) -> tuple[tuple[float, ...], float]:  # type: ignore[override]
        """(seconds per stage, send seconds) of the group's next micro-batch."""
        # Padded as an unpipelined group's ranks are, through every stage (the activations sent included).
        counts = self._run_counts()
        own: list[tuple[float, ...]] = []
        for member, count in zip(self.members, counts):
            plan = self._plans[member.id]
            if plan.empty:
                own.append(member.predictor.dummy_stage_times_s(graph_tokens=count))
                self.dummy_steps[member.id] += 1
            else:
                own.append(member.predictor.stage_times_s(plan.chunks, plan.n_decode, plan.kv_decode_sum,
                                                          plan.kv_decode_max, graph_tokens=count))
        predictor = self.members[0].predictor
        moe_us = self.moe_layer.layer_us(sum(counts), max(counts)) if self.moe_layer is not None else 0.0
        stages = tuple(max(times[i] for times in own) + layers * moe_us * 1e-6
                       for i, layers in enumerate(predictor.moe_layers_per_stage))
        return stages, predictor.send_s(max(counts))
