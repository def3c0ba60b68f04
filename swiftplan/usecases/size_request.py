"""What `size` is asked: the `SizeRequest` a view parses its input into, with the checks it makes of itself
(money against the mode, the serving load, the limits on nodes and headroom), and the checks against the
resolved model that run before any cluster is sized: image options refused as fit refuses them, and DoRA's
methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from swiftplan.errors import SwiftplanError
from swiftplan.planner.model_spec import ModelSpec
from swiftplan.planner.objective import SFT, ObjectiveSetup
from swiftplan.planner.runtime import refuse_eager_for_training
from swiftplan.planner.search.pins import Pins
from swiftplan.planner.setup import AttentionImpl
from swiftplan.planner.sizing.candidates import DEFAULT_MAX_NODES, DEFAULT_NETWORK_GBPS
from swiftplan.planner.sizing.prices import PriceOverride
from swiftplan.planner.sizing.rank import Mode, Objective
from swiftplan.planner.vision import VisionInputs
from swiftplan.usecases import inputs
from swiftplan.usecases.fit_request import FitRequest
from swiftplan.usecases.fit_vision import check_vision as check_fit_vision

SizeTask = Literal["train", "serve"]


MAX_NODES_LIMIT = 256
"""Most --max-nodes size accepts: it sizes every node count from 2 up on every accelerator, so time grows
with it (a 0.5B model on a 2-core machine: 4 nodes 1.3 s, 256 nodes 5.5 s, 1,000 nodes 17 s, 10,000 over
a minute). A fine-tuning or serving job on more than 2,048 GPUs is planned directly with fit --gpus."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SizeRequest:
    """Everything `size` is asked, already parsed from its view's input."""

    model: str
    """Catalog name or alias, hub id, or a local config path."""
    task: SizeTask = "train"
    """Fine-tuning or serving."""
    objective: Objective | None = None
    """What ranks the options; None = purchase with mode buy, cost-per-token for serving, else cost."""
    mode: Mode | None = None
    """rent or buy: only hardware with that price; None: either."""
    budget_usd: float | None = None
    """Most dollars: rental cost of the job (serving: per hour), or the purchase price when buying."""
    deadline_s: float | None = None
    """Training: longest acceptable wall-clock time."""
    max_gpus: int | None = None
    """Most GPUs in all."""
    max_nodes: int = DEFAULT_MAX_NODES
    """Most nodes of 8 GPUs."""
    network_gbps: float = DEFAULT_NETWORK_GBPS
    """Network between nodes, Gb/s per node."""
    vendors: tuple[str, ...] | None = None
    """Only these vendors (any case); None allows all."""
    accelerators: tuple[str, ...] | None = None
    """Only these accelerators (catalog names or aliases); None: the whole catalog."""
    price_overrides: tuple[PriceOverride, ...] = ()
    """The user's prices, replacing the catalog's."""
    pins: Pins = field(default_factory=Pins)
    """Methods, quantizations and LoRA ranks allowed."""
    dataset_tokens: int | None = None
    """Tokens in one epoch; None assumes `inputs.DEFAULT_DATASET_TOKENS`."""
    epochs: float = 1.0
    seq_len: int = 2048
    global_batch: int = 16
    global_batch_typed: bool = False
    """The user typed --global-batch: every cluster trains exactly it; else each rounds it to split over its GPUs."""
    attention: AttentionImpl = "sdpa"
    context: int = 4096
    """Serving: tokens per sequence (with a request rate: prompt + output tokens)."""
    concurrency: int | None = None
    """Serving: sequences at once over all replicas."""
    request_rate: float | None = None
    """Serving: requests per second (with prompt_tokens and output_tokens)."""
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    ttft_s: float | None = None
    """Serving: largest acceptable time to first token."""
    eager: bool = False
    """Serving: decode without CUDA graphs (--enforce-eager)."""
    decode_tps: float | None = None
    """Serving: smallest acceptable decode tokens/s per user."""
    gpu_memory_utilization: float = 0.9
    headroom: float = 0.05
    """Fraction of device memory kept free."""
    host_ram_bytes: int = inputs.DEFAULT_HOST_RAM_BYTES
    """Host RAM per node for offload."""
    runtime: str | None = None
    """Runtime profile every cluster is sized under (profiles/runtimes); None = swiftplan's loop for training,
    today's serving defaults."""
    runtime_options: dict[str, Any] = field(default_factory=dict)
    training: ObjectiveSetup = SFT
    """Training: the objective (SFT, a preference method, RL with rollouts), sized as given (fit searches
    its reference handling and rollout placement)."""
    """What the user set over the profile: RuntimeKnobs fields (training), gpu_memory_utilization (serving)."""
    vision: VisionInputs | None = None
    """Vision-language models: each sequence's (serving: request's) images/video and, training, whether the tower
    and aligner train; every cluster is sized with them, as fit plans them. None = text only."""
    dora: bool = False
    """Training: the adapters are DoRA (--dora): LoRA and QLoRA only."""

    def __post_init__(self) -> None:
        self._check_money()
        if not 0 <= self.headroom < 0.9:
            raise SwiftplanError(f"--headroom must be in [0, 0.9), got {self.headroom}.")
        if self.max_gpus is not None and self.max_gpus < 1:
            raise SwiftplanError(f"--max-gpus must be at least 1, got {self.max_gpus}.")
        if self.max_nodes > MAX_NODES_LIMIT:
            raise SwiftplanError(
                f"--max-nodes {self.max_nodes} is more than size searches: it tries every node count from 2 "
                f"up, on every accelerator, so it takes at most {MAX_NODES_LIMIT} nodes ({MAX_NODES_LIMIT * 8:,} "
                "GPUs), which it answers in seconds.",
                hint="To check one larger cluster, plan it directly: swiftplan fit MODEL --gpus 1000x8xh100.",
            )
        if self.max_nodes < 1 or self.network_gbps <= 0 or self.host_ram_bytes < 0:
            raise SwiftplanError(
                "--max-nodes and --network-gbps must be positive and --host-ram zero or more."
            )
        if self.task == "serve":
            self._check_load()
        else:
            refuse_eager_for_training(self.eager)
            if (
                self.epochs <= 0
                or self.seq_len < 1
                or self.global_batch < 1
                or self.dataset_tokens_or_default <= 0
            ):
                raise SwiftplanError("--dataset-tokens, --epochs, --seq and --global-batch must be positive.")

    def _check_money(self) -> None:
        """The objective must use the price the mode keeps."""
        if self.mode == "buy" and self.goal in ("cost", "cost-per-token"):
            raise SwiftplanError(
                f"--objective {self.goal} ranks by rental price, which --buy does not use.",
                hint="With --buy use --objective purchase or time.",
            )
        if self.mode == "rent" and self.goal == "purchase":
            raise SwiftplanError("--objective purchase ranks by list price, which --rent does not use.")

    def _check_load(self) -> None:
        """Serving needs one load: a concurrency, or a request rate with its token counts."""
        if self.deadline_s is not None:
            raise SwiftplanError(
                "--deadline applies to training (--task sft); serving has --ttft and --decode-tps."
            )
        if self.request_rate is None and self.concurrency is None:
            raise SwiftplanError(
                "Serving sizing needs a load: --concurrency N, or --request-rate R --prompt-tokens P --output-tokens O."
            )
        if self.request_rate is not None and self.concurrency is not None:
            raise SwiftplanError("Give either --concurrency or --request-rate, not both.")
        if self.request_rate is not None and (self.prompt_tokens is None or self.output_tokens is None):
            raise SwiftplanError("--request-rate needs --prompt-tokens and --output-tokens.")

    @property
    def goal(self) -> Objective:
        """The objective, with the mode's and the task's default filled in."""
        if self.objective is not None:
            return self.objective
        return "purchase" if self.mode == "buy" else "cost-per-token" if self.task == "serve" else "cost"

    @property
    def dataset_tokens_or_default(self) -> int:
        """Tokens in one epoch, the assumed count when none was given."""
        return inputs.DEFAULT_DATASET_TOKENS if self.dataset_tokens is None else self.dataset_tokens

    @property
    def load_context(self) -> int:
        """Serving: tokens per sequence (prompt + output with a request rate)."""
        if (
            self.request_rate is not None
            and self.prompt_tokens is not None
            and self.output_tokens is not None
        ):
            return self.prompt_tokens + self.output_tokens
        return self.context


def _with_dora(request: SizeRequest, spec: ModelSpec) -> SizeRequest:
    """--dora sizes DoRA adapters: LoRA and QLoRA only, and none on fused MoE experts (planner/dora.py)."""
    if not request.dora:
        return request
    from swiftplan.planner.dora import check_dora, dora_methods
    from swiftplan.planner.setup import LoraSetup

    check_dora(
        spec, LoraSetup(targets=("all-linear",), dora=True)
    )  # size adapts all-linear, as fit by default
    return replace(request, pins=replace(request.pins, methods=dora_methods(request.pins.methods)))


def _check_vision(request: SizeRequest, spec: ModelSpec) -> None:
    """Image options are refused as fit refuses them (a text-only model, an objective other than SFT) and, for
    training, with a --runtime whose engine does not train on images: before any cluster is sized."""
    if request.vision is None:
        return
    check_fit_vision(
        FitRequest(model=request.model, task=request.task, training=request.training, vision=request.vision),
        spec,
    )
    if request.task == "train" and request.runtime is not None:
        from swiftplan.usecases.fit_engine import require_image_runtime

        require_image_runtime(request.runtime)
