"""What DeepSpeed ZeRO-3 holds gathered over one training step, reuse window and prefetching included (pure: no
torch).

DeepSpeed records the order in which the first step's modules fetch their parameters (its trace) and, when a
module's forward or backward ends, releases each of its partitioned parameters unless the trace uses that
parameter again before `stage3_max_reuse_distance` elements have been fetched in between: it walks the trace from
the next module on, adding every parameter's elements (persistent ones too), and keeps what it meets while the sum
is below the distance (`__params_to_release`). A parameter is also kept while another module that lists it is still
running (peft's LoRA Linear lists its lora_A weight, which its forward reads), and a frozen parameter fetched by a
checkpointed block's recompute belongs to the backward module that triggered the recompute until that module's
backward ends (`ds_recompute_parameters`).

So a parameter stays gathered from one use to the next exactly when fewer than the distance's elements are used in
between. Around the loss the LM head is always kept (its backward comes next); with DeepSpeed's default 1e9 the last
blocks stay too, their forward-to-backward (or, checkpointed, forward-to-recompute) gap being about twice what
follows them in forward; a model under ~0.5e9 parameters stays gathered whole from its forward to its backward.

Prefetching: after every module's fetch DeepSpeed pops that module's parameters off the parameter trace (each
fetch's parameters, with its step id: every hooked module counts a step, those without parameters too), then pops
further entries, all-gathering those not gathered yet, until `stage3_prefetch_bucket_size` elements are launched or
`stage3_max_live_parameters` would be passed (those gathered or in flight counted; a module's own fetch ignores the
limit). Waiting for a prefetched parameter completes its whole prefetch. A parameter the prefetcher passed (it was
gathered already) is not released before the step id of that use (`__most_recent_step_id_param_fetched_for`). So
with DeepSpeed's defaults (bucket 5e7, max live 1e9) about a billion elements run ahead of the module computed.

`zero3_gathered` lays out one step's hooks as DeepSpeed sees them for a transformers decoder (the root modules,
embedding, rotary embedding, blocks of norms, attention and MLP containers, activation and Linears, final norm, LM
head; a LoRA Linear as peft (0.21) wraps it, its dropout module included; a checkpointed block recomputed
non-reentrantly when its last Linear's backward needs its input, up to that Linear), replays the prefetch queue at
every fetch and the release rule at every release, and counts what is gathered or in flight (an all-gather's output
is allocated when it is launched). Source: `ZERO3_TRACE_SOURCE`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cache

from swiftplan.planner.adapters import is_targeted
from swiftplan.planner.architecture import Linear, layer_linears, layer_vector_params
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.runtime_features import checkpointed_blocks
from swiftplan.planner.runtime_terms import (
    PACKED_4BIT_PER_ELEMENT,
    hf_auto_zero3_sizes,
    prefetch_bucket_elements,
)
from swiftplan.planner.setup import LoraSetup, Quant, RuntimeKnobs, TrainSetup
from swiftplan.planner.weights import is_quantized

ZERO3_TRACE_SOURCE = (
    "deepspeedai/DeepSpeed 0.19.8 deepspeed/runtime/zero/partitioned_param_coordinator.py (__params_to_release: the "
    "trace walked from the current step while fewer than max_reuse_distance elements are traversed; "
    "release_sub_module: recompute parameters freed with their owner; __release_param: only once no active module "
    "lists the parameter; fetch_sub_module: the parameter queue popped for the module, then prefetched while under "
    "the bucket and max_live_parameters), parameter_offload.py (the pre/post forward and backward hooks that fetch "
    "and release); replayed event by event against DeepSpeed on its CPU accelerator, reuse distances 0 to 1e9, "
    "prefetch buckets 0 to 1e6 under max live 0 to 1e9, full fine-tuning and LoRA with and without checkpointing: "
    "tests/test_zero3_reuse.py, tests/test_zero3_prefetch.py"
)

DEEPSPEED_PERSISTENCE_ELEMENTS = 100_000
"""ZeRO-3's stage3_param_persistence_threshold when a config does not set it: deepspeed/runtime/zero/config.py
(param_persistence_threshold pp_int(1e5), DeepSpeed 0.19.8). Parameters of at most this many elements stay whole
on every rank and are never gathered or released."""

_FETCH, _END, _FETCH_BACK, _END_BACK = range(4)


@dataclass(frozen=True, kw_only=True, slots=True)
class Zero3Gathered:
    """The most ZeRO-3 holds gathered at once in a step, in elements of partitioned parameters."""

    base: int
    """Of the model's own weights (embedding, Linears, LM head; a 4-bit base packed): the planner's figure."""
    total: int
    """Base weights and LoRA adapters together, at the moment that gathers the most of both."""
    moment: str
    """Where `base` is first reached: the pass and the module fetched then (e.g. "forward lm_head")."""


class _Step:
    """One step's parameters, the modules that list them, and the hooks' fetches and releases in order."""

    def __init__(self, persistence: int) -> None:
        self.persistence = persistence
        self.elements: list[int] = []
        self.gathers: list[bool] = []
        self.adapter: list[bool] = []
        self.frozen: list[bool] = []
        self.units: list[tuple[str, tuple[int, ...]]] = []
        self.events: list[tuple[int, int]] = []

    def param(self, elements: int, *, frozen: bool, adapter: bool = False) -> int:
        self.elements.append(elements)
        self.gathers.append(elements > self.persistence)
        self.adapter.append(adapter)
        self.frozen.append(frozen)
        return len(self.elements) - 1

    def unit(self, name: str, *params: int) -> int:
        self.units.append((name, params))
        return len(self.units) - 1

    def run(self, kind: int, *units: int) -> None:
        self.events.extend((kind, unit) for unit in units)


@dataclass(frozen=True, slots=True)
class _Linear:
    """A Linear's modules: the plain Linear (or peft's base_layer), and with LoRA the wrapper (listing lora_A),
    lora_A and lora_B."""

    base: int
    wrapper: int | None = None
    lora_a: int | None = None
    lora_b: int | None = None
    dropout: int | None = None

    def forward(self, step: _Step, *, stop: bool = False) -> None:
        """Its forward hooks; `stop`: the recompute ends inside its last module's forward (no end hooks)."""
        if self.wrapper is None:
            step.run(_FETCH, self.base)
            if not stop:
                step.run(_END, self.base)
            return
        assert self.lora_a is not None and self.lora_b is not None
        assert self.dropout is not None
        step.run(_FETCH, self.wrapper, self.base)
        step.run(_END, self.base)
        step.run(_FETCH, self.dropout)  # peft's lora_dropout (nn.Identity at 0): a module with no parameters
        step.run(_END, self.dropout)
        step.run(_FETCH, self.lora_a)
        step.run(_END, self.lora_a)
        step.run(_FETCH, self.lora_b)
        if not stop:
            step.run(_END, self.lora_b, self.wrapper)

    def backward_start(self, step: _Step) -> None:
        """Its backward up to the module whose backward needs a saved input (a recompute starts there)."""
        if self.wrapper is None:
            step.run(_FETCH_BACK, self.base)
        else:
            assert self.lora_b is not None
            step.run(_FETCH_BACK, self.wrapper, self.lora_b)

    def backward_rest(self, step: _Step, *, input_grad: bool) -> None:
        """The rest of its backward; without a gradient for its input a module's backward-end hook never
        runs, and a frozen base is not fetched at all."""
        if self.wrapper is None:
            if input_grad:
                step.run(_END_BACK, self.base)
            return
        assert self.lora_a is not None and self.lora_b is not None and self.dropout is not None
        step.run(_END_BACK, self.lora_b)
        step.run(_FETCH_BACK, self.lora_a)
        if input_grad:
            step.run(_END_BACK, self.lora_a)
            step.run(_FETCH_BACK, self.dropout)
            step.run(_END_BACK, self.dropout)
            step.run(_FETCH_BACK, self.base)
            step.run(_END_BACK, self.base, self.wrapper)

    def backward(self, step: _Step, *, input_grad: bool) -> None:
        """Its whole backward (a frozen Linear on an input without gradient has none)."""
        trained = not step.frozen[step.units[self.base][1][0]]
        if self.wrapper is None and not (input_grad or trained):
            return
        self.backward_start(step)
        self.backward_rest(step, input_grad=input_grad)


@dataclass(frozen=True, slots=True)
class _Block:
    """A decoder block's modules: the block itself, its attention and MLP containers and activation (modules
    with no parameters whose hooks still count steps in DeepSpeed's trace), its two norms and its Linears."""

    layer: int
    attn: int
    mlp: int
    act: int
    norms: tuple[int, int]
    linears: list[tuple[Linear, _Linear]]


def _block_modules(
    step: _Step, spec: ModelSpec, layer: int, *, full: bool, lora: LoraSetup | None, quant: Quant
) -> _Block:
    """Block `layer`'s modules (routed experts fused: one module), Linears in forward order."""
    prefix = f"model.layers.{layer}."
    vectors = layer_vector_params(spec, layer)
    block = step.unit(prefix.rstrip("."))
    attn, mlp, act = (
        step.unit(prefix + "self_attn"),
        step.unit(prefix + "mlp"),
        step.unit(prefix + "mlp.act_fn"),
    )
    norm_in = step.unit(prefix + "input_layernorm", step.param(spec.hidden_size, frozen=not full))
    norm_post = step.unit(prefix + "post_attention_layernorm",
                          step.param(vectors - spec.hidden_size, frozen=not full))  # fmt: skip
    linears: list[tuple[Linear, _Linear]] = []
    for lin in layer_linears(spec, layer):
        weight = lin.count * lin.in_features * lin.out_features
        if is_quantized(lin, quant):  # 4-bit: ZeRO-3 shards no other quantized base (setup.zero3_shards)
            weight //= PACKED_4BIT_PER_ELEMENT
        params = [step.param(weight, frozen=not full)]
        if lin.bias:
            params.append(step.param(lin.count * lin.out_features, frozen=not full))
        name = prefix + ("self_attn." if lin.block == "attention" else "mlp.") + lin.name
        if lin.kind == "experts" and linears and linears[-1][0].kind == "experts":
            fused = linears[-1][1].base  # the routed experts: one module holding gate_up and down
            step.units[fused] = (step.units[fused][0], step.units[fused][1] + tuple(params))
            continue
        if lora is None or not is_targeted(lin, lora, spec.model_type):
            linears.append((lin, _Linear(base=step.unit(name, *params))))
            continue
        rank = lora.rank * lin.count * (2 if lin.kind == "experts" and "gate_up" in lin.name else 1)
        a = step.param(rank * lin.in_features, frozen=False, adapter=True)
        b = step.param(rank * lin.out_features, frozen=False, adapter=True)
        linears.append((lin, _Linear(base=step.unit(name + ".base_layer", *params), wrapper=step.unit(name, a),
                                     lora_a=step.unit(name + ".lora_A", a), lora_b=step.unit(name + ".lora_B", b),
                                     dropout=step.unit(name + ".lora_dropout"))))  # fmt: skip
    return _Block(layer=block, attn=attn, mlp=mlp, act=act, norms=(norm_in, norm_post), linears=linears)


def _first_mlp(linears: list[tuple[Linear, _Linear]], index: int) -> bool:
    """Whether the Linear opens the MLP (the post-attention norm runs before it, the activation after it)."""
    return linears[index][0].block == "mlp" and (index == 0 or linears[index - 1][0].block == "attention")


def _block_forward(step: _Step, block: _Block, *, recompute: bool = False) -> None:
    """A block's forward hooks; its recompute (inside the block's call: no hook of the block itself) stops
    inside the last Linear (torch's early stop)."""
    linears = block.linears
    if not recompute:
        step.run(_FETCH, block.layer)
    step.run(_FETCH, block.norms[0])
    step.run(_END, block.norms[0])
    if linears and linears[0][0].block == "attention":
        step.run(_FETCH, block.attn)
    for index, (lin, module) in enumerate(linears):
        if _first_mlp(linears, index):
            if index > 0:
                step.run(_END, block.attn)
            step.run(_FETCH, block.norms[1])
            step.run(_END, block.norms[1])
            step.run(_FETCH, block.mlp)
        module.forward(step, stop=recompute and index == len(linears) - 1)
        if _first_mlp(linears, index) and lin.kind != "experts":
            step.run(_FETCH, block.act)
            step.run(_END, block.act)
    if not recompute:
        step.run(_END, block.mlp)
        step.run(_END, block.layer)


def _reads_block_input(linears: list[tuple[Linear, _Linear]], index: int, hidden: int) -> bool:
    """Whether the Linear projects the block's input (q, k, v, fused qkv, MLA's down projections): an attention
    Linear of hidden-size input other than the output projection (the last attention Linear)."""
    lin, next_lin = linears[index][0], linears[index + 1][0] if index + 1 < len(linears) else None
    return (
        lin.block == "attention"
        and lin.in_features == hidden
        and next_lin is not None
        and next_lin.block == "attention"
    )


def _block_backward(
    step: _Step, spec: ModelSpec, block: _Block, *, checkpointed: bool, input_grad: bool
) -> None:
    """A block's backward hooks, last Linear first; checkpointed, the last Linear's backward starts, the
    block is recomputed, then its backward goes on. The self-attention container's backward-end hook never runs
    (its hidden-states input reaches autograd through keyword arguments)."""
    linears = block.linears
    last = linears[-1][1]
    step.run(_FETCH_BACK, block.layer)
    step.run(_FETCH_BACK, block.mlp)
    if checkpointed:
        last.backward_start(step)
        _block_forward(step, block, recompute=True)
        last.backward_rest(step, input_grad=True)
    for index in reversed(range(len(linears))):
        lin, module = linears[index]
        if _first_mlp(linears, index) and lin.kind != "experts":
            step.run(_FETCH_BACK, block.act)
            step.run(_END_BACK, block.act)
        if not (checkpointed and index == len(linears) - 1):
            module.backward(
                step, input_grad=input_grad or not _reads_block_input(linears, index, spec.hidden_size)
            )
        if _first_mlp(linears, index):
            step.run(_END_BACK, block.mlp)
            step.run(_FETCH_BACK, block.norms[1])
            step.run(_END_BACK, block.norms[1])
            if index > 0:
                step.run(_FETCH_BACK, block.attn)
    if input_grad:
        step.run(_FETCH_BACK, block.norms[0])
        step.run(_END_BACK, block.norms[0])
        step.run(_END_BACK, block.layer)


def _layout(spec: ModelSpec, plan: _Plan, persistence: int) -> _Step:
    """One step's fetches and releases, as DeepSpeed's module hooks make them."""
    step, full, lora, saved, wrapped = (
        _Step(persistence),
        plan.lora is None,
        plan.lora,
        plan.saved,
        plan.wrapped,
    )
    # the root modules: peft's PeftModel, LoraModel and the causal LM, or the causal LM; then its decoder
    roots = [step.unit(name) for name in ("", "base_model", "base_model.model")[: 1 if full else 3]]
    decoder = step.unit("model")
    embedding = step.param(spec.vocab_size * spec.hidden_size, frozen=not (full or "embed_tokens" in saved))
    embed = step.unit("model.embed_tokens", embedding)
    rotary = step.unit("model.rotary_emb")
    head_param = embedding if spec.tie_word_embeddings else step.param(spec.vocab_size * spec.hidden_size,
                                                                        frozen=not (full or "lm_head" in saved))  # fmt: skip
    head = step.unit("lm_head", head_param)
    final_norm = step.unit("model.norm", step.param(spec.hidden_size, frozen=not full))
    blocks = [
        _block_modules(step, spec, i, full=full, lora=lora, quant=plan.quant) for i in range(spec.num_layers)
    ]
    # transformers' checkpointing makes the embedding output require grad (enable_input_require_grads)
    embed_grad = full or bool(wrapped) or not step.frozen[embedding]
    step.run(_FETCH, *roots, decoder, embed)
    step.run(_END, embed)
    step.run(_FETCH, rotary)
    step.run(_END, rotary)
    for block in blocks:
        _block_forward(step, block)
    step.run(_FETCH, final_norm)
    step.run(_END, final_norm, decoder)
    step.run(_FETCH, head)
    step.run(_END, head, *reversed(roots))
    step.run(_FETCH_BACK, *roots, head)
    step.run(_END_BACK, head)
    step.run(_FETCH_BACK, decoder, final_norm)
    step.run(_END_BACK, final_norm)
    for layer in reversed(range(spec.num_layers)):
        _block_backward(step, spec, blocks[layer], checkpointed=layer in wrapped,
                        input_grad=embed_grad or layer > 0)  # fmt: skip
    if embed_grad:  # its backward-end hook never runs: the token ids carry no gradient
        step.run(_FETCH_BACK, embed)
    return step


_NOT_AVAILABLE, _INFLIGHT, _AVAILABLE = range(3)


def _replay(step: _Step, reuse: int, prefetch: int, max_live: int) -> Zero3Gathered:
    """DeepSpeed's fetch, prefetch and release rules at every hook of the laid-out step; the most gathered or in
    flight when a fetch returns."""
    trace = [unit for kind, unit in step.events if kind in (_FETCH, _FETCH_BACK)]
    prefix = [0]
    for unit in trace:
        prefix.append(prefix[-1] + sum(step.elements[p] for p in step.units[unit][1]))
    uses: dict[int, list[int]] = {}
    for position, unit in enumerate(trace):
        for p in step.units[unit][1]:
            uses.setdefault(p, []).append(position)
    # the parameter trace DeepSpeed prefetches from: each fetch's parameters in ds_id order, with its step id
    queue = [(p, position) for position, unit in enumerate(trace) for p in sorted(set(step.units[unit][1]))]
    head = 0
    recent = [-(10**10)] * len(step.elements)  # __most_recent_step_id_param_fetched_for
    status = [_NOT_AVAILABLE if g else _AVAILABLE for g in step.gathers]
    handles: dict[int, list[int]] = {}  # in flight: the prefetch each parameter was gathered with

    def reused(p: int, position: int) -> bool:
        at = bisect.bisect_left(uses[p], position)
        return at < len(uses[p]) and prefix[uses[p][at]] - prefix[position] < reuse

    active: dict[int, set[int]] = {}
    owners: dict[int, list[int]] = {}  # recompute parameters per owner
    running_back: dict[int, None] = {}  # backward modules running, in the order they started
    fetched, in_backward, available = 0, False, 0
    best_base, best_total, moment = -1, 0, ""
    held = [0, 0]  # base and adapter elements gathered or in flight

    def gather(p: int, state: int) -> None:
        nonlocal available
        status[p] = state
        available += step.elements[p]
        held[step.adapter[p]] += step.elements[p]

    for kind, unit in step.events:
        name, params = step.units[unit]
        if kind in (_FETCH, _FETCH_BACK):
            in_backward = in_backward or kind == _FETCH_BACK
            if kind == _FETCH_BACK:
                running_back.setdefault(unit, None)
            for p in params:
                active.setdefault(p, set()).add(unit)
                if kind == _FETCH and in_backward and step.frozen[p] and running_back:
                    owner = next(reversed(running_back))
                    owners.setdefault(owner, []).append(p)
                    active[p].add(owner)
                if status[p] == _NOT_AVAILABLE:
                    gather(p, _AVAILABLE)
                elif status[p] == _INFLIGHT:  # waiting on its prefetch completes the whole prefetch
                    for q in handles.pop(p):
                        if status[q] == _INFLIGHT:
                            status[q] = _AVAILABLE
            # pop the module's own parameters off the queue, unless a prefetch already passed them
            wanted = len({p for p in params if recent[p] < fetched})
            while head < len(queue) and wanted:
                p, position = queue[head]
                head, recent[p], wanted = head + 1, position, wanted - 1
            limit, ahead, prefetched = min(max_live - available, prefetch), 0, []
            while prefetch > 0 and head < len(queue) and ahead < limit:
                p, position = queue[head]
                head, recent[p] = head + 1, max(recent[p], position)
                if status[p] == _NOT_AVAILABLE and p not in prefetched:
                    prefetched.append(p)
                    ahead += step.elements[p]
            for p in prefetched:
                gather(p, _INFLIGHT)
                handles[p] = prefetched
            fetched += 1
            base = held[0]
            if base > best_base:
                where = (
                    "recompute"
                    if kind == _FETCH and in_backward
                    else "forward"
                    if kind == _FETCH
                    else "backward"
                )
                best_base, moment = base, f"{where} {name}"
            best_total = max(best_total, base + held[1])
            continue
        release = {p for p in params if step.gathers[p] and not reused(p, fetched) and recent[p] <= fetched}
        members = set(params)
        if kind == _END_BACK:
            recomputed = owners.pop(unit, [])
            release |= {p for p in recomputed if step.gathers[p]}
            members |= set(recomputed)
            running_back.pop(unit, None)
        for p in members:
            active[p].discard(unit)
            if p in release and not active[p] and status[p] == _AVAILABLE:
                status[p] = _NOT_AVAILABLE
                available -= step.elements[p]
                held[step.adapter[p]] -= step.elements[p]
    return Zero3Gathered(base=best_base, total=best_total, moment=moment)


def persistence_elements(spec: ModelSpec, knobs: RuntimeKnobs) -> int:
    """stage3_param_persistence_threshold as the run sees it: the HF Trainer's 10 · hidden for the "auto" that
    every rendered ZeRO-3 config with `ds_auto_buckets` writes, else DeepSpeed's default."""
    if knobs.ds_auto_buckets:
        return hf_auto_zero3_sizes(spec.hidden_size)["stage3_param_persistence_threshold"]
    return DEEPSPEED_PERSISTENCE_ELEMENTS


@dataclass(frozen=True, slots=True)
class _Plan:
    """What of a set-up shapes the step's fetches: LoRA (None: full fine-tuning), the 4-bit base, the trained
    copies of the embedding or LM head, and the checkpointed blocks."""

    lora: LoraSetup | None
    quant: Quant
    saved: tuple[str, ...]
    wrapped: frozenset[int]


@cache
def _gathered(
    spec: ModelSpec, plan: _Plan, reuse: int, persistence: int, prefetch: int, max_live: int
) -> Zero3Gathered:
    return _replay(_layout(spec, plan, persistence), reuse, prefetch, max_live)


def zero3_gathered(
    spec: ModelSpec,
    setup: TrainSetup,
    *,
    reuse: int | None = None,
    persistence: int | None = None,
    prefetch: int | None = None,
    max_live: int | None = None,
) -> Zero3Gathered:
    """The most DeepSpeed ZeRO-3 holds gathered or in flight at once over one step: the module computed, what a
    checkpointed recompute holds, what the reuse window keeps between two uses (`reuse`: stage3_max_reuse_distance
    in elements) and what the prefetcher fetches ahead (`prefetch`: stage3_prefetch_bucket_size, `max_live`:
    stage3_max_live_parameters; 0 for either: no prefetching); each the set-up's by default. Source:
    `ZERO3_TRACE_SOURCE`."""
    knobs = setup.runtime
    reuse = knobs.max_reuse_distance if reuse is None else reuse
    persistence = persistence_elements(spec, knobs) if persistence is None else persistence
    prefetch = prefetch_bucket_elements(spec, knobs) if prefetch is None else prefetch
    max_live = knobs.max_live_parameters if max_live is None else max_live
    wrapped = checkpointed_blocks(spec.num_layers, every=knobs.ckpt_every, position=knobs.ckpt_position)
    plan = _Plan(lora=setup.lora if setup.trains_adapters else None, quant=setup.quant,
                 saved=knobs.modules_to_save, wrapped=frozenset(wrapped if setup.grad_ckpt else ()))  # fmt: skip
    return _gathered(spec, plan, reuse, persistence, prefetch, max_live)
