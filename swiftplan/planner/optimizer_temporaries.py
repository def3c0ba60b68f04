"""Bytes an optimizer step holds beyond the states: torch AdamW per its implementation, Adafactor's fp32 copies,
DeepSpeed ZeRO's per-group temporaries, and the optimizer stepped in backward (one parameter at a time)."""

from __future__ import annotations

from functools import cache

from swiftplan.planner.adapters import is_targeted, lora_params_for
from swiftplan.planner.architecture import largest_param_elements, linear_modules, total_params
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.runtime_terms import (
    adamw_impl_temporary_bytes,
    deepspeed_zero,
    zero_step_group_elements,
    zero_step_temporary_bytes,
)
from swiftplan.planner.setup import TrainSetup
from swiftplan.planner.states import StateDtypes


@cache
def matrix_shape_sum(spec: ModelSpec) -> int:
    """Adafactor's state elements for the whole model: rows + cols per matrix (factored second
    moment), the full size of every vector (norm weights, biases), all fp32."""
    # (elements, row + column state) per matrix; a fused (E, out, in) expert tensor factors over
    # its last two dims, keeping E × out rows and E × in columns.
    matrices = [
        (lin.count * lin.out_features * lin.in_features, lin.count * (lin.out_features + lin.in_features))
        for _, lin in linear_modules(spec)
    ]
    heads = 1 if spec.tie_word_embeddings else 2
    matrices += [(spec.vocab_size * spec.hidden_size, spec.vocab_size + spec.hidden_size)] * heads
    vectors = total_params(spec) - sum(elements for elements, _ in matrices)
    return sum(state for _, state in matrices) + vectors


def optimizer_step_temporaries(
    spec: ModelSpec, setup: TrainSetup, trainable: int, dtypes: StateDtypes, *, dp: int, saved: int = 0
) -> int:
    """Extra bytes live during optimizer.step() (`saved`: the modules_to_save copies among `trainable`).

    Plain torch: AdamW per its implementation (`runtime_terms.adamw_impl_temporary_bytes`) over the
    trainable parameters; Adafactor (transformers) loops over parameters and for the largest one holds
    fp32 copies of the gradient and the parameter (16-bit models) plus grad² and the update: 4 × 4 B ×
    its elements (2 × 4 B when the parameter is already fp32); SGD and the 8-bit optimizers update in
    place. DeepSpeed ZeRO steps flat partitions of this rank's share, one group at a time, each with a
    master-dtype gradient copy (`runtime_terms.zero_step_temporary_bytes`): the optimizer's temporaries
    are those of one partition, not of the whole model. With the optimizer in backward (torchtune's
    OptimizerInBackward, one optimizer per parameter) each step covers one parameter, so the temporaries
    are those of the largest (traced: tests/test_trace_knobs.py).
    """
    if trainable == 0:
        return 0
    state_bytes = dtype_bytes(dtypes.optimizer)
    largest = min(largest_param_elements(spec), trainable)
    if not deepspeed_zero(setup):
        if setup.optimizer == "adamw":
            sb = dtype_bytes(dtypes.saved)
            return _torch_adamw_temporaries(setup, trainable=trainable, largest=largest, saved=saved,
                                            state_bytes=state_bytes, saved_bytes=sb)  # fmt: skip
        return _other_optimizer_temporaries(spec, setup, largest, state_bytes)
    if setup.runtime.optimizer_in_backward:  # one optimizer per parameter, stepped in backward
        trainable = largest
    group = zero_step_group_elements(
        stage=setup.parallel.zero, partition=-(-trainable // dp), largest_partition=-(-largest // dp)
    )
    if setup.optimizer == "adamw":  # one flat tensor: a group-sized sqrt (for_loop: and its quotient)
        optimizer_temp = adamw_impl_temporary_bytes(
            setup.runtime, trainable=group, largest=group, state_bytes=state_bytes
        )
    else:
        optimizer_temp = _other_optimizer_temporaries(spec, setup, largest, state_bytes)
    return zero_step_temporary_bytes(
        group=group,
        grad_bytes=dtype_bytes(dtypes.gradients),
        master_bytes=dtype_bytes(dtypes.master or dtypes.gradients),
        optimizer_temp=optimizer_temp,
    )


def _torch_adamw_temporaries(
    setup: TrainSetup, *, trainable: int, largest: int, saved: int, state_bytes: int, saved_bytes: int
) -> int:
    """torch AdamW's step temporaries (`adamw_impl_temporary_bytes`), each parameter's in its own state dtype:
    modules_to_save copies (`saved` elements, one vocab × hidden tensor each) keep theirs in their own dtype
    beside fp32 adapters. foreach holds every parameter's at once, for_loop one parameter's. With the
    optimizer in backward (one optimizer per parameter, torchtune's OptimizerInBackward) each step covers
    one parameter: the larger of the two kinds' largest (traced: tests/test_trace_knobs.py)."""
    knobs, rest = setup.runtime, trainable - saved
    each_saved = saved // max(1, len(knobs.modules_to_save))
    if knobs.optimizer_in_backward:
        rest, saved = min(largest, rest), each_saved
    own = adamw_impl_temporary_bytes(
        knobs, trainable=rest, largest=min(largest, rest), state_bytes=state_bytes
    )
    copies = adamw_impl_temporary_bytes(knobs, trainable=saved, largest=each_saved, state_bytes=saved_bytes)
    one_at_a_time = knobs.optimizer_impl == "for_loop" or knobs.optimizer_in_backward
    return max(own, copies) if one_at_a_time else own + copies


def _other_optimizer_temporaries(spec: ModelSpec, setup: TrainSetup, largest: int, state_bytes: int) -> int:
    """Adafactor's per-parameter fp32 copies of the largest parameter; none for SGD and 8-bit AdamW."""
    if setup.optimizer != "adafactor":
        return 0
    if setup.trains_adapters:
        assert setup.lora is not None
        largest = (
            max(
                lora_params_for(lin, setup.lora)
                for _, lin in linear_modules(spec)
                if is_targeted(lin, setup.lora, spec.model_type)
            )
            // 2
        )
    copies = 2 if state_bytes == 4 else 4
    return copies * 4 * largest
