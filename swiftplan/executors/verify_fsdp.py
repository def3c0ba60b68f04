"""Estimate vs trace under FSDP: rank 0 of a fake process group runs FSDP2's own code (`trace_fsdp`), and
`train_memory` for the same world size is lined up with it term by term.

The rows are those of `verify.verify_training` (weights, adapters, gradients and optimizer state as this
rank's shards, activations, logits, the peak) plus `gathered`: FSDP's unsharded parameters alive at the peak
(the planner's gathered units, part of its `transient`).
"""

from __future__ import annotations

from swiftplan.errors import SwiftplanError
from swiftplan.executors.trace_fsdp import FsdpLayout, trace_fsdp_training
from swiftplan.executors.verify import TERMS, Comparison, TermRow, _estimate_at_peak, trace_arguments
from swiftplan.executors.verify_knobs import refuse_untraceable
from swiftplan.planner.architecture import embedding_params
from swiftplan.planner.calibration import constant
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.fsdp_memory import fsdp_gathered, fsdp_gradients
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import state_dtypes
from swiftplan.planner.train_memory import TrainMemory, train_memory


def _fsdp_rows(spec: ModelSpec, setup: TrainSetup, memory: TrainMemory) -> dict[str, int]:
    """The estimate's rows at an FSDP moment: the activations and gathered parameters of that moment
    (planner/fsdp_memory.py), and as gradients what else it holds beyond the shards and the logits (sharded
    gradients, a unit's whole gradients and their reduce-scatter input). The optimizer step is left as is."""
    device = memory.device
    phase = device.peak_phase
    if phase == "optimizer step":
        return {"gathered": 0}
    layers, dtypes = range(spec.num_layers), state_dtypes(setup)
    wb, gb = dtype_bytes(dtypes.weights), dtype_bytes(dtypes.gradients)
    held = fsdp_gathered(spec, setup, layers, wb)
    whole_grads = fsdp_gradients(spec, setup, layers, weight_bytes=wb, grad_bytes=gb).in_backward
    gathered = {
        "FSDP forward start": held.forward_start,
        "FSDP last block forward": device.transient,
        "loss and backward start": held.at_loss,
        "FSDP block backward": device.transient - whole_grads,
        "recomputation in backward": device.transient - whole_grads,
        "end of backward": held.root,
    }.get(phase, 0)
    # tied: the LM head's and the embedding's gradients wait in autograd's input buffer for their sum
    tied_sum = phase == "end of backward" and spec.tie_word_embeddings and not setup.trains_adapters
    addend = embedding_params(spec) * dtype_bytes(state_dtypes(setup).gradients) // setup.parallel.tp
    acts = memory.phase_activations.get(phase, device.activations)
    logits = device.logits if phase == "loss and backward start" else 0
    rows = {
        "activations": addend if tied_sum else acts,
        "logits": addend if tied_sum else logits,
        "gathered": gathered,
    }
    states = sum(
        getattr(device, name) for name in TERMS if name not in ("gradients", "activations", "logits")
    )
    allocated = device.peak_allocated - int(constant("runtime_overhead", "cublas_workspace_bytes"))
    return rows | {"gradients": allocated - states - sum(rows.values())}


def _untraceable_setup(setup: TrainSetup) -> list[str]:
    """What of an FSDP set-up beyond its knobs (`verify_knobs.untraceable_fsdp`) the FSDP tracer cannot run,
    one sentence each naming the flag."""
    reasons = []
    if setup.precision.startswith("amp-"):
        reasons.append(
            f"--precision {setup.precision}: FSDP2 runs mixed precision through its MixedPrecisionPolicy, "
            "which is not traced (use bf16, fp16 or fp32)"
        )
    if setup.method == "qlora" or setup.quant != "none":
        reasons.append(f"--quant {setup.quant}: quantized bases are not traced under FSDP")
    if setup.parallel.tp > 1 or setup.parallel.pp > 1:
        reasons.append("--tp/--pp: FSDP is traced alone, without tensor or pipeline parallelism")
    if setup.optimizer not in ("adamw", "sgd", "adafactor"):
        reasons.append(f"--optimizer {setup.optimizer}: 8-bit optimizers are not traced under FSDP")
    return reasons


def verify_fsdp(spec: ModelSpec, setup: TrainSetup, *, world_size: int, steps: int = 2) -> Comparison:
    """Trace rank 0 of `world_size` under the set-up's FSDP and compare every term with `train_memory`."""
    refuse_untraceable(setup.runtime, world_size=world_size)
    if reasons := _untraceable_setup(setup):
        raise SwiftplanError(
            "verify cannot trace this FSDP set-up: " + "; ".join(reasons) + ".",
            hint="`swiftplan estimate ...` gives the analytic estimate alone.",
        )
    knobs = setup.runtime
    layout = FsdpLayout(
        world_size=world_size,
        sharding=knobs.fsdp_sharding,
        shard_group=knobs.fsdp_shard_group,
        cpu_offload=knobs.fsdp_cpu_offload,
    )
    result = trace_fsdp_training(
        dict(spec.hf_config),
        layout=layout,
        **trace_arguments(spec, setup, optimizer=setup.optimizer, steps=steps),  # amp refused above
    )
    memory = train_memory(spec, setup, world_size=world_size)
    workspace = int(constant("runtime_overhead", "cublas_workspace_bytes"))
    estimate = _estimate_at_peak(memory, setup, workspace) | _fsdp_rows(spec, setup, memory)
    trace = result.trace
    traced = dict(trace.at_peak) | {"gathered": result.gathered_at_peak, "peak_allocated": trace.peak_bytes}
    rows = tuple(
        TermRow(name=name, estimate=estimate.get(name, 0), traced=traced.get(name, 0))
        for name in (*TERMS, "gathered", "peak_allocated")
        if estimate.get(name, 0) or traced.get(name, 0) or name == "peak_allocated"
    )
    notes = (f"FSDP: both figures are rank 0's of {world_size}",)
    return Comparison(
        rows=rows, trace=trace, estimate_phase=memory.device.peak_phase, notes=notes + trace.notes
    )
