"""Host-link time of the runtime features that move training state to host RAM, per optimizer step.

- Activation offloading (`--activation-offload`): every offloaded saved tensor goes to pinned host memory
  in forward and comes back in backward, on side streams that overlap the copies with compute
  (torchtune's OffloadActivations `use_streams`, `OFFLOAD_SOURCE`). Only the part of the copies longer
  than the compute they hide behind adds to the step.
- FSDP CPU offload (`--fsdp-cpu-offload`): each rank's parameter shard is copied host-to-device before
  its all-gather, in forward and again in backward, and its reduce-scattered gradient shard is copied
  device-to-host (`FSDP_OFFLOAD_SOURCE`); counted in full, as ZeRO-Offload's transfers are in speed.py.

Not counted: the optimizer step on the CPU (its speed depends on the host's cores and memory, which the
planner does not know).
"""

from __future__ import annotations

from swiftplan.planner.activations import activation_phases
from swiftplan.planner.dtypes import dtype_bytes, module_dtype
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import state_dtypes
from swiftplan.planner.weights import layer_weight_bytes, outer_weight_bytes

ACTIVATION_COPIES_PER_MICRO_STEP = 2
"""Each offloaded saved tensor crosses the host link twice: to the host in forward, back in backward
(torchtune/training/_activation_offloading.py: pack_tensor copies out, unpack_tensor copies in)."""
FSDP_PARAM_COPIES_PER_MICRO_STEP = 2
"""FSDP copies a rank's parameter shard host-to-device before each all-gather: once for forward and once
for backward, since full_shard reshards after forward (torch/distributed/fsdp/_fully_shard/_fsdp_param.py)."""


def activation_offload_s(
    spec: ModelSpec,
    setup: TrainSetup,
    *,
    pcie_bytes_per_s: float,
    compute_s: float,
    layers: int | None = None,
) -> float:
    """Exposed seconds per step of activation offloading: max(0, grad_accum × 2 × offloaded bytes / PCIe −
    compute_s), the copies overlapping the step's compute (`compute_s`, all micro-batches)."""
    if not setup.runtime.activation_offload:
        return 0.0
    offloaded = activation_phases(spec, setup, layers=layers, tp=setup.parallel.tp).offloaded
    copies_s = setup.grad_accum * ACTIVATION_COPIES_PER_MICRO_STEP * offloaded / pcie_bytes_per_s
    return max(0.0, copies_s - compute_s)


def fsdp_cpu_offload_s(
    spec: ModelSpec, setup: TrainSetup, *, pcie_bytes_per_s: float, trainable_params: int, shards: int
) -> float:
    """Seconds per step of FSDP CPU offload: grad_accum × 2 × parameter shard bytes host-to-device, plus
    the gradient shard device-to-host once per micro-step, over the host link (`shards` ranks share
    the model)."""
    if not setup.runtime.fsdp_cpu_offload:
        return 0.0
    wb = dtype_bytes(module_dtype(setup))
    model_bytes = outer_weight_bytes(spec, dtype_bytes=wb) + sum(
        layer_weight_bytes(spec, i, dtype_bytes=wb, quant=setup.quant, double_quant=setup.double_quant)
        for i in range(spec.num_layers)
    )
    grad_bytes = trainable_params * dtype_bytes(state_dtypes(setup).gradients)
    adapter_bytes = grad_bytes if setup.trains_adapters else 0  # adapters sit in the gradient dtype
    split = shards * setup.parallel.tp * setup.parallel.pp
    per_micro = FSDP_PARAM_COPIES_PER_MICRO_STEP * (model_bytes + adapter_bytes) / split + grad_bytes / split
    return setup.grad_accum * per_micro / pcie_bytes_per_s
