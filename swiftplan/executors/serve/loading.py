"""Load what the built-in server serves: model (weights or random init), tokenizer, LoRA adapters.

Needs torch, transformers and (for adapters) peft: `pip install 'swiftplan[serve]'`.
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftplan.errors import SwiftplanError

_SERVE_HINT = "pip install 'swiftplan[serve]' (torch, transformers, peft, fastapi, uvicorn)."
_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadedModel:
    """A model ready to generate: eval mode, on its device, adapters attached."""

    model: Any
    """The transformers model (a peft PeftModel when adapters are loaded)."""
    tokenizer: Any
    """The matching tokenizer."""
    device: str
    """'cuda' or 'cpu'."""
    adapters: tuple[str, ...]
    """Names of the loaded LoRA adapters (selectable as model names)."""
    max_positions: int | None
    """The model's max_position_embeddings, when its config has one."""


def require_serve_dependencies() -> None:
    """Fail with one clear sentence when the [serve] extra is missing."""
    missing = [name for name in ("torch", "transformers", "fastapi", "uvicorn") if _missing(name)]
    if missing:
        raise SwiftplanError(f"The built-in server needs {', '.join(missing)}.", hint=_SERVE_HINT)


def _missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def pick_device(device: str) -> str:
    """'auto' → cuda when available, else cpu; an explicit 'cuda' without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SwiftplanError(
            "--device cuda was asked for but torch sees no CUDA device.", hint="Use --device cpu."
        )
    return device


def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise SwiftplanError(
            f"Cannot load a tokenizer from {source!r} ({type(error).__name__}).",
            hint="Pass --tokenizer with a local tokenizer directory or a hub id.",
        ) from error


def _random_init(config_path: Path, dtype: Any, seed: int) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
        config = AutoConfig.for_model(**data)
    except (OSError, ValueError, KeyError) as error:
        raise SwiftplanError(f"Cannot build a model from {config_path}: {error}.") from error
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _pretrained(source: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as error:
        raise SwiftplanError(
            f"Cannot load model weights from {source!r} ({type(error).__name__}: {str(error).splitlines()[0]}).",
            hint="Pass --model with a local model directory or a hub id (with network), "
            "or --random-init CONFIG.json --tokenizer DIR to serve random weights.",
        ) from error


def _attach_adapters(model: Any, adapters: dict[str, str]) -> Any:
    if not adapters:
        return model
    try:
        from peft import PeftModel
    except ImportError as error:
        raise SwiftplanError("Serving LoRA adapters needs peft.", hint=_SERVE_HINT) from error
    items = list(adapters.items())
    try:
        name, path = items[0]
        model = PeftModel.from_pretrained(model, path, adapter_name=name)
        for name, path in items[1:]:
            model.load_adapter(path, adapter_name=name)
    except (OSError, ValueError, RuntimeError) as error:
        raise SwiftplanError(
            f"Cannot load LoRA adapter {name!r} from {path} ({type(error).__name__}: {str(error).splitlines()[0]}).",
            hint="--lora NAME=PATH takes a directory written by peft's save_pretrained for this base model.",
        ) from error
    return model


def load_model(
    *, source: str | None, random_init: str | None, tokenizer: str | None, dtype: str, device: str,
    adapters: dict[str, str], seed: int = 0,
) -> LoadedModel:  # fmt: skip
    """Weights from `source` (hub id or directory), or random weights from a config.json."""
    import torch

    device = pick_device(device)
    torch_dtype = getattr(torch, _TORCH_DTYPES[dtype])
    if random_init is not None:
        if tokenizer is None:
            raise SwiftplanError("--random-init needs --tokenizer (a tokenizer directory or hub id).")
        model = _random_init(Path(random_init), torch_dtype, seed)
    else:
        assert source is not None
        model = _pretrained(source, torch_dtype)
    tok = _load_tokenizer(tokenizer or source or "")
    model = _attach_adapters(model, adapters).to(device).eval()
    max_positions = getattr(model.config, "max_position_embeddings", None)
    return LoadedModel(
        model=model, tokenizer=tok, device=device, adapters=tuple(adapters), max_positions=max_positions
    )


def memory_probe(device: str) -> tuple[int, str]:
    """CUDA max_memory_allocated on a GPU; the process's peak resident set size on CPU."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated()), "cuda_max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "process_peak_rss"


def max_chars_per_token(tokenizer: Any) -> int | None:
    """Most characters of text one token can stand for, when the tokenizer bounds it; None when not.

    A BPE vocabulary's tokens each cover one of its entries, so a prompt of N characters has at least
    N / (longest entry) tokens (+1: SentencePiece's '▁' marks a space the decoded entry drops). Models
    that fold a run of unknown characters into one token (unigram, WordPiece, BPE with fuse_unk and
    no byte fallback) have no such bound.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers.models import BPE

    model = backend.model
    if not isinstance(model, BPE) or (model.unk_token and model.fuse_unk and not model.byte_fallback):
        return None
    size = backend.get_vocab_size(with_added_tokens=True)
    entries = backend.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    return max(map(len, entries), default=0) + 1
