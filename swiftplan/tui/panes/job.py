"""Tab 2: the job form. It only holds text; `swiftplan.tui.job.parse_job` checks it in the search worker.

The Runtime select follows the task: the training runtimes for every training task, the serving
runtimes (vLLM first) for serve, each task keeping the runtime last picked for it. The runtime knobs sit
in a collapsed group under the job; picking a training runtime fills them with that runtime's values
(looked up in `RUNTIME_KNOBS`, made once from the profiles), and the search plans with the ones the user
changed over them, as fit's knob flags do. They are training's only: while the task is serve the group
is closed and disabled and shows the runtime's own values (the user's edits come back with a training
task), and a knob changed anyway gets the CLI's refusal of knob flags with --task serve. The other fields
one task alone reads (serving's latency targets; training's DoRA, data files, packing and
vision tower and aligner switches, and the measure switch) are disabled for the
other task, keeping their text, and the search ignores them there. The measure fields (top-k, steps,
layers, device) are disabled while the measure switch is off."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.css.query import NoMatches
from textual.suggester import SuggestFromList
from textual.widgets import Button, Collapsible, Input, Label, Select, Static

from swiftplan.tui.job import (
    FORM_DEFAULTS,
    KNOBS_FOR,
    METHOD_CHOICES,
    OBJECTIVE_CHOICES,
    QUANT_CHOICES,
    SERVE_ONLY,
    TASK_CHOICES,
    TRAIN_ONLY,
    runtime_choices,
    task_runtimes,
)
from swiftplan.tui.knobs import KNOB_CHOICES, KNOB_FIELDS, runtime_knob_text
from swiftplan.tui.measure import MEASURE_OPTIONS
from swiftplan.usecases.measure import MEASURE_DEVICES

SELECTS = {
    "task": TASK_CHOICES,
    "runtime": runtime_choices(),
    "objective": OBJECTIVE_CHOICES,
    "method": METHOD_CHOICES,
    "quant": QUANT_CHOICES,
    "pareto": ("no", "yes"),
    "eager": ("no", "yes"),
    "dora": ("no", "yes"),
    "packing": ("no", "yes"),
    "variable_lengths": ("no", "yes"),
    "train_vit": ("no", "yes"),
    "train_aligner": ("no", "yes"),
    "measure": ("no", "yes"),
    "measure_device": MEASURE_DEVICES,
}
"""Fields chosen from a list; the rest are typed."""
RUNTIME_KNOBS = {name: runtime_knob_text(name) for name in SELECTS["runtime"]}
"""Each runtime's knob field texts (its profile's defaults over swiftplan's)."""
KNOB_LAYOUT = (
    ("loss", "Loss", "optimizer_impl", "Optimizer impl"),
    ("loss_chunks", "Loss chunks", "loss_chunk_tokens", "Chunk tokens"),
    ("fsdp", "FSDP", "fsdp_sharding", "FSDP sharding"),
    ("fsdp_shard_group", "Shard group", "fsdp_cpu_offload", "FSDP offload"),
    ("ckpt_every", "Ckpt every", "ckpt_position", "Ckpt position"),
    ("activation_offload", "Act. offload", "float8", "Float8"),
    ("optimizer_in_backward", "Opt. in bwd", "ds_buckets", "DS buckets"),
    ("modules_to_save", "Save modules", "adapter_dtype", "Adapter dtype"),
    ("keep_output", "Keep output", "ds_overlap_comm", "DS overlap"),
    ("ds_auto_buckets", "DS auto sizes", "reduce_bucket_elements", "DS reduce bucket"),
    ("prefetch_bucket_elements", "DS prefetch", "max_live_parameters", "DS live params"),
    ("padding", "Padding", "max_reuse_distance", "DS reuse dist"),
    ("expandable_segments", "Expandable segs", "", ""),
)
"""The knob group's rows, as LAYOUT (every field of `KNOB_FIELDS` once)."""
KNOBS_TITLE = "Runtime knobs (training): the runtime's defaults; edit to override"
SERVE_KNOBS_TITLE = "Runtime knobs (training only: a serving plan takes none)"
LAYOUT = (
    ("task", "Task", "objective", "Objective"),
    ("runtime", "Runtime", "eager", "Eager decode"),
    ("method", "Method", "quant", "Quantization"),
    ("rank", "LoRA rank", "dora", "DoRA"),
    ("seq", "Sequence len", "global_batch", "Global batch"),
    ("dataset_tokens", "Dataset tokens", "epochs", "Epochs"),
    ("data", "Data file", "lengths", "Lengths file"),
    ("packing", "Packing", "variable_lengths", "Varying lengths"),
    ("images", "Images/sample", "image_size", "Image size"),
    ("image_tokens", "Image tokens", "video_frames", "Video frames"),
    ("train_vit", "Train ViT", "train_aligner", "Train aligner"),
    ("context", "Serve context", "concurrency", "Concurrency"),
    ("ttft", "Serve TTFT s", "decode_tps", "Decode tok/s"),
    ("seed", "Seed", "trials", "Trials"),
    ("storage", "Storage URL", "study_name", "Study name"),
    ("headroom", "Headroom", "host_ram", "Host RAM GiB"),
    ("pareto", "Pareto front", "", ""),
    ("measure", "Measure", "measure_top", "Measure top-k"),
    ("measure_steps", "Measure steps", "measure_layers", "Measure layers"),
    ("measure_device", "Measure device", "", ""),
)
"""Rows of (field, label, field, label) under the model field; an empty field leaves its cells blank."""
HELP = (
    "tab/shift+tab move between fields · enter or ctrl+r searches · esc leaves a field, then 1-5 switch tabs.\n"
    "Method and quantization limit what the search may choose; LoRA rank auto searches 4-256; DoRA trains DoRA "
    "adapters (LoRA and QLoRA only); dataset tokens (50M, 1.5B) only scale time and cost, unless a data file "
    "(.jsonl/.json/text) or a lengths file (one token count a line) is given: then its samples are counted and "
    "memory is planned on their longest padded batch, or with packing on full sequence-length rows of packed "
    "samples (without a file every row is full already, so packing changes nothing); varying lengths (fit's "
    "--variable-lengths) says the samples vary with no file to say how: batches padded by the runtime's padding, "
    "and more allocator slack for the lengths seen; images per sample, image size (WIDTHxHEIGHT), "
    "image tokens (language-model tokens per image, instead of the size) and video frames (one video per sample) "
    "are for vision-language models (fit's --images-per-sample, --image-size, --image-tokens, --video-frames), and "
    "in training, train ViT and train aligner also train the vision tower and the aligner (ms-swift freezes both); context, concurrency, eager decode (no "
    "CUDA graphs: more KV cache, slower small-model steps), TTFT (largest time to first token) and decode tokens/s per user (the "
    "smallest) are for serving; fields the task does not read are greyed out; runtime is the training "
    "framework planned for (its loss, optimizer and engine; profiles/runtimes), or for serve the serving engine "
    "(its decode step cost); picking a training one fills the runtime knobs with its defaults, and each knob is "
    "the CLI flag of the same name (--loss, --fsdp, …); a storage URL (fit's --storage, e.g. sqlite:///study.db) "
    "keeps the study, resumed by the next search with the same study name (default: derived from the problem). "
    "Measure (fit's --measure) runs the top-k candidates after the search for a few real optimizer steps each "
    "(after one warm-up) on this machine's GPU, from a random-init model built from the config (measure layers builds "
    "fewer layers), and shows their measured tokens/s beside the predicted ones (x stops it); device cpu is a "
    "smoke run: CPU timings do not rank GPU plans. It cannot run QLoRA/int8 candidates, ZeRO or tp/pp layouts "
    "(skipped, with the reason) nor a job with images."
)
PLACEHOLDERS = {
    "rank": "16 · 8,16,32 · auto",
    "concurrency": "auto",
    "trials": "auto",
    "ttft": "none · 0.5",
    "decode_tps": "none · 20",
    "data": "optional · train.jsonl",
    "lengths": "optional · lengths.txt",
    "images": "none · 1 · 2",
    "image_size": "processor max · 1024x768",
    "image_tokens": "from size · 256",
    "video_frames": "none · 16",
    "storage": "none · sqlite:///study.db",
    "study_name": "from the problem",
    "modules_to_save": "none · embed_tokens,lm_head",
    "measure_layers": "all · 2",
}


class JobPane(VerticalScroll):
    """Model (with catalog suggestions), task, pins, workload and objective; ctrl+r searches."""

    DEFAULT_CSS = """
    JobPane { padding: 0 1; }
    JobPane Grid { grid-size: 4; grid-columns: 15 1fr 15 1fr; grid-rows: 1; grid-gutter: 0 1; height: auto; }
    JobPane #job-model-row { grid-size: 2; grid-columns: 15 1fr; margin: 0 0 0 0; }
    JobPane Label { color: $text-muted; }
    JobPane #job-model-hint { color: $text-muted; padding: 0 0 0 16; }
    JobPane #job-error { color: $error; margin: 1 0 0 0; }
    JobPane #job-go { margin: 1 0 0 16; }
    JobPane #job-help { color: $text-muted; margin: 1 0 0 0; }
    JobPane #job-knobs { margin: 1 0 0 0; padding: 0; border: none; }
    JobPane #job-knobs Contents { padding: 0; }
    """

    def __init__(self, *, model_choices: Sequence[str], id: str | None = None) -> None:
        super().__init__(id=id)
        self._choices = list(model_choices)
        self._knobs_for = FORM_DEFAULTS["runtime"]
        """The training runtime whose values the knob fields were last filled with."""
        self._serving = FORM_DEFAULTS["task"] == "serve"
        """Whether the Runtime select and the knob group are set for serve."""
        self._runtime_for = {False: FORM_DEFAULTS["runtime"], True: task_runtimes("serve")[0]}
        """The runtime last picked for training and for serving (each comes back with its task)."""
        self._training_knobs: dict[str, str] = {}
        """The knob fields' texts set aside while the task is serve."""

    def _field(self, key: str) -> Input | Select[str]:
        initial = {**FORM_DEFAULTS, **RUNTIME_KNOBS[self._knobs_for]}[key]
        choices = (
            task_runtimes(FORM_DEFAULTS["task"])
            if key == "runtime"
            else SELECTS.get(key) or KNOB_CHOICES.get(key)
        )
        idle = self._idle(key)
        if choices is not None:
            return Select(
                [(choice, choice) for choice in choices],
                value=initial,
                allow_blank=False,
                compact=True,
                id=f"job-{key}",
                disabled=idle,
            )
        return Input(
            initial, placeholder=PLACEHOLDERS.get(key, ""), compact=True, id=f"job-{key}", disabled=idle
        )

    def _idle(self, key: str) -> bool:
        """A field the task does not read, or a measure field while the switch is off."""
        if key in (TRAIN_ONLY if self._serving else SERVE_ONLY):
            return True
        return key in MEASURE_OPTIONS and (self._serving or not self._measuring())

    def _measuring(self) -> bool:
        try:
            return self._widget("measure").value == "yes"
        except NoMatches:  # composing: the switch is not mounted yet
            return FORM_DEFAULTS["measure"] == "yes"

    def _follow_measure(self) -> None:
        """The measure fields enabled while the switch is on (and the task trains)."""
        for key in MEASURE_OPTIONS:
            self._widget(key).disabled = self._idle(key)

    def _rows(self, layout: tuple[tuple[str, str, str, str], ...]) -> ComposeResult:
        for left, left_label, right, right_label in layout:
            yield Label(left_label)
            yield self._field(left)
            yield Label(right_label)
            yield self._field(right) if right else Static("")

    def compose(self) -> ComposeResult:
        with Grid(id="job-model-row"):
            yield Label("Model")
            yield Input(
                FORM_DEFAULTS["model"],
                placeholder="catalog name, hub id or path to config.json",
                suggester=SuggestFromList(self._choices, case_sensitive=False),
                compact=True,
                id="job-model",
            )
        yield Static("type a model: suggestions come from the catalog (→ accepts)", id="job-model-hint")
        with Grid():
            yield from self._rows(LAYOUT)
        with Collapsible(title=KNOBS_TITLE, id="job-knobs"), Grid(id="job-knob-grid"):
            yield from self._rows(KNOB_LAYOUT)
        yield Button("Search  ctrl+r", id="job-go", compact=True, variant="primary")
        yield Static("", id="job-error")
        yield Static(HELP, id="job-help")

    def _widget(self, key: str) -> Input | Select[str]:
        if key in SELECTS or key in KNOB_CHOICES:
            return self.query_one(f"#job-{key}", Select)
        return self.query_one(f"#job-{key}", Input)

    def values(self) -> dict[str, str]:
        """Every field's text, keyed as `FORM_DEFAULTS` and `KNOB_FIELDS` (the runtimes offered for the task
        and the knobs filled for the runtime shown, should their change not have been handled yet), and
        `KNOBS_FOR`: the training runtime whose values the knob fields hold."""
        self._follow_task()
        self._follow_runtime()
        out = {}
        for key in (*FORM_DEFAULTS, *KNOB_FIELDS):
            value = self._widget(key).value
            out[key] = str(value) if value is not Select.BLANK else ""
        return {**out, KNOBS_FOR: self._knobs_for}

    def fill(self, values: dict[str, str]) -> None:
        """Set fields (the CLI's --model, tests). The task comes first and sets the runtimes offered, a
        runtime next and fills the knobs with its values; knobs given too override them."""
        if "task" in values:
            self._widget("task").value = values["task"]
            self._follow_task()
        if "runtime" in values:
            self._widget("runtime").value = values["runtime"]
            self._follow_runtime()
        for key, value in values.items():
            if key not in ("task", "runtime"):
                self._widget(key).value = value

    def _follow_task(self) -> None:
        """The Runtime select's options and the knob group for the task shown (once per switch between
        training and serving): each side gets back its last runtime, and the knob fields set aside for
        serving hold the training runtime's own values, so that serving sees none changed."""
        serving = self._widget("task").value == "serve"
        if serving == self._serving:
            return
        runtime = self._widget("runtime")
        assert isinstance(runtime, Select)
        self._runtime_for[self._serving] = str(runtime.value)
        self._serving = serving
        if serving:
            self._training_knobs = {key: str(self._widget(key).value) for key in KNOB_FIELDS}
            knobs = RUNTIME_KNOBS[self._knobs_for]
        else:
            knobs, self._training_knobs = self._training_knobs, {}
        choices = task_runtimes("serve" if serving else "train")
        runtime.set_options([(choice, choice) for choice in choices])
        runtime.value = self._runtime_for[serving]
        for key, text in knobs.items():
            self._widget(key).value = text
        for key in (*SERVE_ONLY, *TRAIN_ONLY):
            self._widget(key).disabled = key in (TRAIN_ONLY if serving else SERVE_ONLY)
        self._follow_measure()
        group = self.query_one("#job-knobs", Collapsible)
        group.title = SERVE_KNOBS_TITLE if serving else KNOBS_TITLE
        group.disabled = serving
        if serving:
            group.collapsed = True

    def _follow_runtime(self) -> None:
        """The knob fields with the training runtime shown's values (once per change of runtime; a
        serving runtime has no knobs)."""
        runtime = str(self._widget("runtime").value)
        if runtime == self._knobs_for or runtime not in RUNTIME_KNOBS:
            return
        self._knobs_for = runtime
        for key, text in RUNTIME_KNOBS[runtime].items():
            self._widget(key).value = text

    def on_select_changed(self, event: Select.Changed) -> None:
        # read the selects as they are now: a switch of task sets the runtime twice before either event arrives
        if event.select.id == "job-task":
            self._follow_task()
        elif event.select.id == "job-runtime":
            self._follow_runtime()
        elif event.select.id == "job-measure":
            self._follow_measure()

    def show_model_hint(self, name: str, text: str) -> None:
        """The line under the model field, if it still describes what is typed."""
        if self.query_one("#job-model", Input).value.strip() == name.strip():
            self.query_one("#job-model-hint", Static).update(text)

    def show_error(self, message: str | None, hint: str | None = None) -> None:
        """Why the last search could not start (None clears it)."""
        text = Text(message or "")
        if hint:
            text.append(f"\n{hint}", style="dim")
        self.query_one("#job-error", Static).update(text)
