"""Export a finished run: the LoRA adapter as is, or merged into the base model as safetensors.

The base model is rebuilt the way the run loaded it (same weights, or the same seeded random init
for `--random-init` runs); merging happens in the base model's dtype with peft's `merge_and_unload`.
The output directory gets the weights, config.json and the run's tokenizer.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace
from pathlib import Path

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train import run_dir as rd


def trained_weights(run_dir: Path) -> Path:
    """RUN/final, or the newest checkpoint when the run never finished."""
    final = run_dir / "final"
    if final.is_dir():
        return final
    checkpoint = rd.latest_checkpoint(run_dir)
    if checkpoint is None:
        raise SwiftplanError(f"{run_dir} has neither final/ nor a checkpoint.", hint="Is it a `swiftplan train` run directory?")  # fmt: skip
    return checkpoint


def load_trained(run_dir: Path, *, device: str = "cpu"):  # noqa: ANN201 (a peft or transformers model)
    """The run's model with its trained weights (peft model for LoRA runs), on `device`, in eval mode."""
    from swiftplan.executors.train.engine import load_weights
    from swiftplan.executors.train.model import load_model
    from swiftplan.plan_file import load_plan
    from swiftplan.planner.setup import TrainSetup

    args = rd.read_args(run_dir)
    setup = load_plan(run_dir / "plan.yaml").setup
    assert isinstance(setup, TrainSetup)  # a run directory holds the training plan `swiftplan train` ran
    if setup.quant != "none":
        raise SwiftplanError(f"Merging into a {setup.quant} base is not supported; export the adapter without --merge.")  # fmt: skip
    # Build without gradient checkpointing or dropout side effects; weights are what matters here.
    setup = replace(setup, grad_ckpt=False)
    import torch

    vocab = int(torch.load(run_dir / "dataset.pt", weights_only=True)["vocab_size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames, called from inside peft
        model = load_model(args.model, setup, device=torch.device(device), random_init=args.random_init,
                           seed=args.seed, vocab_size=vocab)  # fmt: skip
    load_weights(model, trained_weights(run_dir))
    return model.eval()


def export_run(run_dir: Path, output: Path, *, merge: bool) -> Path:
    """Write the adapter (or, with merge, the merged model) plus config and tokenizer into `output`."""
    if not (run_dir / "train_args.json").is_file():
        raise SwiftplanError(f"{run_dir} is not a `swiftplan train` run directory (no train_args.json).")
    weights = trained_weights(run_dir)
    is_adapter = (weights / "adapter_model.safetensors").is_file()
    output.mkdir(parents=True, exist_ok=True)
    if merge and is_adapter:
        model = load_trained(run_dir)
        merged = model.merge_and_unload()
        merged.save_pretrained(output, safe_serialization=True)
    else:
        for name in ("adapter_model.safetensors", "adapter_config.json", "model.safetensors", "config.json",
                     "generation_config.json", "model.safetensors.index.json"):  # fmt: skip
            if (weights / name).is_file():
                shutil.copyfile(weights / name, output / name)
        for shard in weights.glob("model-*.safetensors"):
            shutil.copyfile(shard, output / shard.name)
    tokenizer = run_dir / "tokenizer"
    if tokenizer.is_dir():
        for item in tokenizer.iterdir():
            shutil.copyfile(item, output / item.name)
    return output
