"""Memory terms of the features runtimes use, each a small formula with its source.

- the loss: transformers < 4.46's shifted fp32 logits, token-chunked cross-entropy, or fused linear + cross-entropy;
- the AdamW implementation's step temporaries (fused, foreach, for-loop);
- modules trained in full next to LoRA (peft `modules_to_save`);
- DeepSpeed's gradient reduce bucket(s) and ZeRO-3's gathered-parameter buffers;
- DeepSpeed ZeRO's optimizer step over flat fp32 partitions (per param group, ZeRO-3 per sub-group).
"""

from __future__ import annotations

import math

from swiftplan.planner.architecture import largest_param_elements
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import RuntimeKnobs, TrainSetup

FP32 = 4


def chunked_loss_bytes(tokens: int, vocab: int, *, chunks: int, compute_bytes: int) -> int:
    """torchtune `CEWithChunkedOutputLoss` (num_output_chunks, default 8): the model returns the logits
    as `chunks` compute-dtype pieces that stay alive through the loss; each piece is upcast and
    log_softmax keeps its fp32 output for backward. The peak is the larger of
    - the last piece's forward: all compute-dtype logits, all fp32 log_softmax outputs, and the
      piece's fp32 copy: T × V × (cb + 4) + c × V × 4 (c = ceil(T / chunks));
    - a piece's backward, the pieces dropped: all saved outputs plus the piece's nll and log_softmax
      gradients: T × V × 4 + c × V × 8.
    Source: pytorch/torchtune torchtune/modules/loss/ce_chunked_output_loss.py @ bd2a0fc (and its
    recipes' `del logits` before backward); traced on fake tensors (tests/test_runtime_terms.py)."""
    per_chunk = math.ceil(tokens / chunks)
    forward = tokens * vocab * (compute_bytes + FP32) + per_chunk * vocab * FP32
    backward = tokens * vocab * FP32 + per_chunk * vocab * 2 * FP32
    return max(forward, backward)


def chunked_head_sum_bytes(*, batch: int, seq: int, vocab: int, chunks: int, compute_bytes: int, head_grad_bytes: int) -> int:  # fmt: skip
    """What a trained LM head's backward holds beyond the saved activations under torchtune's chunked loss:
    the head runs once per piece of the hidden states (`TransformerDecoder.chunked_output`:
    `[self.output(chunk) for chunk in last_hidden_state.chunk(num_output_chunks, dim=1)]`), so autograd
    sums `pieces` weight gradients into one input buffer. Each arrives as a view (`mm_mat2_backward`'s
    `.t()` of the mm output, then TBackward0's), so the first sum is out of place — the held gradient, the
    new one and their sum, three vocab × hidden gradients — while the logits' gradients of the pieces not yet
    reached (all but the last two, ceil(S / chunks) positions each) are still alive; later sums add
    in place into that fresh tensor. 0 with one piece. Source: torch 2.13 torch/csrc/autograd/input_buffer.cpp
    (`accumulate`: `old_var.add_(var)` only when `can_accumulate_inplace(old_var)`, which needs the buffer
    to hold the storage's last reference; a view shares it with its base), identical on CPU and CUDA;
    measured with real CPU tensors (profiler allocation events) and traced (tests/test_trace_knobs.py).
    The fake-tensor trace sums every piece out of place (FakeTensor is tensor-subclass-like), three
    gradients each time, with fewer logits' gradients left: the same peak."""
    per_piece = math.ceil(seq / chunks)
    pieces = math.ceil(seq / per_piece)
    if pieces < 2:
        return 0
    return 3 * head_grad_bytes + batch * (pieces - 2) * per_piece * vocab * compute_bytes


def legacy_loss_bytes(*, batch: int, seq: int, vocab: int, keep_output: bool = False) -> int:
    """transformers 4.31.0-4.45.2 `LlamaForCausalLM.forward` (and Qwen2's, 4.37+): `logits = logits.float()`
    in forward, kept in the returned output; `shift_logits = logits[..., :-1, :].contiguous()`, then
    `CrossEntropyLoss` (log_softmax + nll_loss) over the B × (S - 1) shifted positions. The compute-dtype
    logits die at the upcast (`_to_copy` saves no tensor for backward). With the output dropped before
    backward (`Trainer.compute_loss` returns only the loss), the larger of
    - forward, at log_softmax: the fp32 logits, the shifted copy and the log_softmax output:
      B·S·V·4 + 2·B·(S-1)·V·4; with batch 1 the slice is already contiguous and no copy is made,
      B·S·V·4 + B·(S-1)·V·4;
    - backward, at its first ops: the saved log_softmax output, nll_loss_backward's gradient and
      _log_softmax_backward_data's output: 3·B·(S-1)·V·4.
    Source: transformers 4.38.2 (and 4.45.2) src/transformers/models/llama/modeling_llama.py
    LlamaForCausalLM.forward; 4.46.0 moved the loss into `self.loss_function` (loss/loss_utils.py), 4.31.0
    added the upcast. Traced with transformers 4.38.2 (benchmarks/results/legacy_loss_trace.md).
    `keep_output`: a loop that holds the output through backward keeps the fp32 logits beside the three
    backward tensors (traced: 15.95 B per token × vocab against 11.97)."""
    shifted = batch * (seq - 1) * vocab * FP32
    upcast = batch * seq * vocab * FP32
    copy = shifted if batch > 1 else 0
    return max(upcast + copy + shifted, 3 * shifted + (upcast if keep_output else 0))


def fused_linear_chunk_tokens(tokens: int, vocab: int, hidden: int, chunk_tokens: int = 0) -> int:
    """Tokens per chunk of a fused linear cross-entropy: `chunk_tokens` when set, else Liger's rule
    next_power_of_2(ceil(T / ceil(V / H))), which keeps a chunk's logits about T × H elements
    (linkedin/Liger-Kernel src/liger_kernel/ops/fused_linear_cross_entropy.py @ e11c2d6)."""
    if chunk_tokens:
        return min(tokens, chunk_tokens)
    inc = math.ceil(vocab / hidden)
    return min(tokens, 1 << max(0, math.ceil(tokens / inc) - 1).bit_length())


def fused_linear_loss_bytes(
    tokens: int, vocab: int, hidden: int, *, compute_bytes: int, chunk_tokens: int = 0
) -> int:
    """Fused linear + cross-entropy (Liger, cut cross-entropy, Unsloth, TRL chunked_nll): the LM head
    runs chunk by chunk inside the loss and the gradient is computed in forward, so no T × V tensor
    survives. Alive: one chunk's logits in fp32 (its gradient is written in place), the hidden-state
    gradient T × H in the compute dtype and the per-token fp32 loss: chunk × V × 4 + T × H × cb + T × 4.
    Source: linkedin/Liger-Kernel src/liger_kernel/ops/fused_linear_cross_entropy.py @ e11c2d6
    (grad_input = zeros_like(input), loss_1d fp32, one logits_chunk at a time)."""
    chunk = fused_linear_chunk_tokens(tokens, vocab, hidden, chunk_tokens)
    return chunk * vocab * FP32 + tokens * hidden * compute_bytes + tokens * FP32


def adamw_impl_temporary_bytes(knobs: RuntimeKnobs, *, trainable: int, largest: int, state_bytes: int) -> int:
    """Extra bytes torch.optim.AdamW holds during step() beyond its state.

    fused: the CUDA kernel updates in place, none. foreach (`_multi_tensor_adamw`, torch's default on
    CUDA when neither flag is given, `_default_to_fused_or_foreach`): `torch._foreach_sqrt(exp_avg_sqs)`
    makes one new tensor per parameter, all alive until `_foreach_addcdiv_` — one parameter-sized
    temporary in the state dtype. for_loop (`_single_tensor_adam`): `denom = (exp_avg_sq.sqrt() /
    bias_correction2_sqrt).add_(eps)` holds the sqrt and the quotient at once, two temporaries the size of
    the parameter being stepped, so twice the largest. Source: torch 2.13 torch/optim/adam.py
    (`exp_avg_sq_sqrt = torch._foreach_sqrt(...)`; `_single_tensor_adam`'s denom), torch/optim/optimizer.py;
    traced on fake tensors (tests/test_runtime_terms.py, for_loop: tests/test_trace_knobs.py)."""
    if knobs.optimizer_impl == "foreach":
        return trainable * state_bytes
    if knobs.optimizer_impl == "for_loop":
        return 2 * min(largest, trainable) * state_bytes
    return 0


def saved_module_params(spec: ModelSpec, knobs: RuntimeKnobs) -> int:
    """Parameters of the modules peft trains in full next to LoRA (`modules_to_save`): each wrapped
    module gets a trainable deep copy (peft ModulesToSaveWrapper), vocab × hidden for the embedding
    or the LM head. Gradients and optimizer state follow from these like any trainable parameter."""
    return len(knobs.modules_to_save) * spec.vocab_size * spec.hidden_size


def saved_module_activation_bytes(spec: ModelSpec, setup: TrainSetup, compute_bytes: int) -> int:
    """A trainable LM head keeps its input (T × H, compute dtype) for its weight gradient; a trainable
    embedding keeps only the token ids (counted as nothing)."""
    if "lm_head" not in setup.runtime.modules_to_save:
        return 0
    return setup.micro_batch * setup.seq_len * spec.hidden_size * compute_bytes


HF_AUTO_PREFETCH_FRACTION = 0.9
"""The HF Trainer fills an "auto" stage3_prefetch_bucket_size with int(0.9 · hidden²) and an "auto"
reduce_bucket_size with hidden² (huggingface/transformers 5.25.0 integrations/deepspeed.py,
HfTrainerDeepSpeedConfig.trainer_config_finalize)."""


HF_AUTO_ZERO3_KEYS = (
    "reduce_bucket_size",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
)
"""The ZeRO-3 sizes a DeepSpeed JSON may leave "auto" for the HF Trainer (`hf_auto_zero3_sizes`)."""


def hf_auto_zero3_sizes(hidden_size: int) -> dict[str, int]:
    """What the HF Trainer writes for a ZeRO-3 JSON's "auto" sizes (trainer_config_finalize)."""
    values = (
        hidden_size * hidden_size,
        int(HF_AUTO_PREFETCH_FRACTION * hidden_size * hidden_size),
        10 * hidden_size,
    )
    return dict(zip(HF_AUTO_ZERO3_KEYS, values, strict=True))


def auto_reduce_bucket(knobs: RuntimeKnobs, *, stage: int) -> bool:
    """Whether the reduce bucket is the HF Trainer's "auto" size (hidden²): ZeRO-3 with `ds_auto_buckets`."""
    return knobs.ds_auto_buckets and stage == 3


def reduce_bucket_elements(spec: ModelSpec, knobs: RuntimeKnobs, *, stage: int) -> int:
    """DeepSpeed's reduce_bucket_size as the run sees it: hidden² when a ZeRO-3 config says "auto"
    (`auto_reduce_bucket`), else `reduce_bucket_elements`."""
    if auto_reduce_bucket(knobs, stage=stage):
        return hf_auto_zero3_sizes(spec.hidden_size)["reduce_bucket_size"]
    return knobs.reduce_bucket_elements


def prefetch_bucket_elements(spec: ModelSpec, knobs: RuntimeKnobs) -> int:
    """ZeRO-3's stage3_prefetch_bucket_size as the run sees it: int(0.9 · hidden²) for "auto"."""
    if knobs.ds_auto_buckets:
        return hf_auto_zero3_sizes(spec.hidden_size)["stage3_prefetch_bucket_size"]
    return knobs.prefetch_bucket_elements


def zero_sharded(
    setup: TrainSetup, dp: int, *, optimizer: int, master: int, gradients: int
) -> tuple[int, int, int]:
    """(optimizer, master, gradients) bytes after ZeRO/FSDP sharding over the data-parallel ranks: stage 1
    shards the optimizer state and the master copy, stage 2 also the gradients (stage 3's parameters are the
    caller's, with what it gathers)."""
    stage, shards = sharding_stage(setup), shard_degree(setup, dp)
    if stage >= 1:
        optimizer, master = optimizer // shards, master // shards
    if stage >= 2:
        gradients //= shards
    return optimizer, master, gradients


def grads_on_host(setup: TrainSetup) -> bool:
    """DeepSpeed ZeRO-2/3 with the optimizer offloaded keeps the gradient partition on the host, in the CPU
    optimizer's fp32 buffer: the device holds only the reduce bucket(s). Source: deepspeedai/DeepSpeed @ edaa722
    stage_1_and_2.py (copy_grads_in_partition under cpu_offload), stage3.py (grad_partitions_flat_buffer on
    self.device, the CPU with offload_optimizer)."""
    return setup.parallel.offload != "none" and sharding_stage(setup) >= 2 and setup.runtime.fsdp == "none"


def reduce_bucket_buffers(knobs: RuntimeKnobs, *, stage: int) -> int:
    """Reduce buckets DeepSpeed allocates: two below ZeRO-3 with overlap_comm (one filled while the other is
    reduced), else one (stage_1_and_2.py setup_buckets; stage3.py)."""
    return 2 if stage < 3 and knobs.ds_overlap_comm else 1


def reduce_bucket_bytes(spec: ModelSpec, knobs: RuntimeKnobs, *, stage: int, grad_bytes: int) -> int:
    """DeepSpeed's contiguous gradient bucket(s): `reduce_bucket_size` elements in the gradient dtype,
    allocated at full size whatever the model. Stages 1-2 take one buffer, two with overlap_comm; stage 3
    one. Source: deepspeedai/DeepSpeed @ edaa722 deepspeed/runtime/zero/config.py (reduce_bucket_size 5e8,
    overlap_comm default = stage 3), stage_1_and_2.py (setup_buckets: buf_0, buf_1 with overlap_comm),
    stage3.py (bucket.buffer)."""
    if not knobs.ds_buckets or stage == 0 or knobs.fsdp != "none":
        return 0
    return (
        reduce_bucket_buffers(knobs, stage=stage)
        * reduce_bucket_elements(spec, knobs, stage=stage)
        * grad_bytes
    )


def zero3_live_parameter_bytes(
    spec: ModelSpec, knobs: RuntimeKnobs, *, weight_bytes: int, tp: int, held_elements: int = 0
) -> int:
    """ZeRO-3 gathers parameters module by module. With `held_elements`, the most the step holds gathered or in
    flight (`zero3_trace.zero3_gathered`: the module computed, a recompute's block, what the
    stage3_max_reuse_distance window keeps, and what the prefetcher fetches ahead, up to
    `stage3_max_live_parameters`), that is all: nothing is added beside it. Without it, the largest parameter
    tensor plus one `stage3_prefetch_bucket_size` fetched ahead while fewer than `stage3_max_live_parameters` are
    gathered (max live 0: nothing ahead), a lower bound: DeepSpeed prefetches again at every module's fetch.
    Source: deepspeedai/DeepSpeed 0.19.8 deepspeed/runtime/zero/config.py (prefetch 5e7, max live 1e9),
    partitioned_param_coordinator.py (fetch_sub_module: the sub-module's parameters, then a prefetch of at most
    min(max live − available, prefetch bucket))."""
    if held_elements:
        return max(largest_param_elements(spec), held_elements) * weight_bytes // tp
    gathered = largest_param_elements(spec)
    ahead = max(0, min(prefetch_bucket_elements(spec, knobs), knobs.max_live_parameters - gathered))
    return (gathered + ahead) * weight_bytes // tp


PACKED_4BIT_PER_ELEMENT = 4
"""4-bit weights in one element of a 16-bit `bnb_4bit_quant_storage` (what ZeRO-3 partitions and gathers)."""


DEEPSPEED_SUB_GROUP_ELEMENTS = 1_000_000_000
"""ZeRO-3 `sub_group_size`: DeepSpeed's default (deepspeed/runtime/zero/config.py, pp_int(1e9), DeepSpeed
0.19.8) and the value ms-swift's zero3.json sets (modelscope/ms-swift @ 35992c1 swift/llm/ds_config/zero3.json)."""


def zero_step_group_elements(
    *, stage: int, partition: int, largest_partition: int, sub_group: int = DEEPSPEED_SUB_GROUP_ELEMENTS
) -> int:
    """Elements of the largest flat fp32 partition one DeepSpeed optimizer.step() call sees on a rank.

    ZeRO-1/2 step each param group's partition in turn (`_optimizer_step(i)` over
    `single_partition_of_fp32_groups[i]`); the planner counts one group, the rank's whole partition.
    ZeRO-3 splits each group into sub-groups that close once their partitions reach `sub_group_size`
    elements (`_create_fp16_sub_groups`) and steps them one at a time, so a sub-group holds fewer than
    sub_group_size + one parameter's partition. Source: DeepSpeed 0.19.8 deepspeed/runtime/zero/stage3.py
    (`step`, `_create_fp16_sub_groups`, `_optimizer_step`), stage_1_and_2.py (`step`, `_optimizer_step`)."""
    if stage < 3:
        return partition
    return min(partition, sub_group + largest_partition)


def zero_step_temporary_bytes(*, group: int, grad_bytes: int, master_bytes: int, optimizer_temp: int) -> int:
    """Bytes DeepSpeed ZeRO allocates while stepping one flat partition of `group` elements, beyond the
    persistent gradient partitions, master copy and optimizer state.

    It flattens the group's 16-bit gradients (`self.flatten`, a copy: group × grad_bytes), casts that to
    the master dtype as the fp32 gradient of the partition (group × master_bytes; the cast is the same
    tensor when the dtypes agree), drops the 16-bit copy, runs the optimizer on the one flat tensor (its
    own temporaries: `optimizer_temp`, e.g. foreach AdamW's sqrt of the whole group) and frees the fp32
    gradient before the next group. Peak: max(flatten + cast, cast + optimizer_temp). Source: DeepSpeed
    0.19.8 deepspeed/runtime/zero/stage3.py (`_prepare_fp32_grad_for_sub_group`, `_release_sub_group`),
    stage_1_and_2.py (`step`: `single_grad_partition = flat_grad_partition.to(...)`); measured on the CPU
    accelerator for stages 1-3, fused and foreach (tests/test_zero3_memory.py)."""
    fp32_grad = group * master_bytes
    cast = fp32_grad + (group * grad_bytes if grad_bytes != master_bytes else 0)
    return max(cast, fp32_grad + optimizer_temp)


def deepspeed_zero(setup: TrainSetup) -> bool:
    """DeepSpeed's ZeRO optimizer wraps the step (not FSDP, not plain torch)."""
    return setup.parallel.zero >= 1 and setup.runtime.fsdp == "none"


def zero3_replayed(setup: TrainSetup) -> bool:
    """DeepSpeed ZeRO-3 with its live and prefetch parameters counted (`ds_buckets`): the gathered parameters are
    the step `zero3_trace` replays, not a block-sized allowance."""
    return sharding_stage(setup) == 3 and deepspeed_zero(setup) and setup.runtime.ds_buckets


def sharding_stage(setup: TrainSetup) -> int:
    """The ZeRO stage the set-up's sharding amounts to: DeepSpeed's, or FSDP's equivalent."""
    return setup.parallel.zero or setup.runtime.fsdp_stage


def shard_degree(setup: TrainSetup, dp: int) -> int:
    """Ranks a state is sharded over: dp, or for FSDP hybrid_shard the shard group inside it."""
    knobs = setup.runtime
    if knobs.fsdp != "none" and knobs.fsdp_sharding == "hybrid_shard" and knobs.fsdp_shard_group:
        return max(1, min(dp, knobs.fsdp_shard_group))
    return dp
