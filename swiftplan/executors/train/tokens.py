"""Turn validated records into fixed-length token blocks with answer-only labels.

Each record becomes text segments marked trainable or not; the segments are tokenized one by one
(without special tokens) and concatenated, so label masking is exact at segment boundaries. Chat
and ShareGPT records are rendered with the tokenizer's chat template: the prompt of each assistant
turn is the template with `add_generation_prompt=True`, the answer is what the next turn adds.
Blocks are `seq_len` tokens long, as the planner assumed: padded (pad ignored by attention and loss)
or, with packing, cut from the concatenated examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train.data import Dataset, Record

IGNORE_INDEX = -100
"""Label value PyTorch's cross-entropy (and transformers' loss) skips."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenBlocks:
    """Training blocks of exactly `seq_len` tokens."""

    input_ids: list[list[int]]
    """Token ids per block."""
    labels: list[list[int]]
    """Targets per block (IGNORE_INDEX where no loss is taken)."""
    attention_mask: list[list[int]]
    """1 for real tokens, 0 for padding."""
    real_tokens: int
    """Non-padding tokens over all blocks."""
    trained_tokens: int
    """Tokens that carry a loss."""
    truncated: int
    """Examples cut at seq_len (without packing)."""
    dropped: int
    """Examples left with no trainable token after truncation."""


def _chat_segments(record: Record, tokenizer: Any) -> list[tuple[str, bool]]:
    if not getattr(tokenizer, "chat_template", None):
        raise SwiftplanError(
            f"{record.where}: chat data needs a tokenizer with a chat template, and this tokenizer has none.",
            hint="Use the instruct model's tokenizer (--tokenizer DIR), or convert the data to alpaca or text format.",
        )
    messages = [{"role": role, "content": content} for role, content in record.messages]

    def render(turns: list[dict[str, str]], prompt: bool) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)

    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:index], True) if index else ""
        full = render(messages[: index + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise SwiftplanError(
                f"{record.where}: the tokenizer's chat template does not render this conversation turn by turn "
                "(an earlier turn changes when a later one is added), so the answer tokens cannot be isolated.",
                hint="Use a tokenizer whose template renders turns incrementally, or convert the data to text format.",
            )
        segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    rest = render(messages, False)[len(done) :]
    segments.append((rest, False))
    return [(text, train) for text, train in segments if text]


def segments(record: Record, tokenizer: Any) -> list[tuple[str, bool]]:
    """(text, trainable) pieces of one record, special tokens included as text where the template has them."""
    if record.messages:
        return _chat_segments(record, tokenizer)
    if record.prompt:
        return [(record.prompt, False), (record.answer, True)]
    return [(record.answer, True)]


def encode(record: Record, tokenizer: Any) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one record, untruncated; alpaca and text get BOS (if any) and a trained EOS."""
    ids: list[int] = []
    labels: list[int] = []
    if not record.messages and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    for text, train in segments(record, tokenizer):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if train else [IGNORE_INDEX] * len(piece)
    if not record.messages and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return ids, labels


def pad_token_id(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (common for base models without a pad token)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise SwiftplanError("The tokenizer has neither a pad nor an EOS token; cannot pad sequences.")


def build_blocks(dataset: Dataset, tokenizer: Any, *, seq_len: int, packing: bool) -> TokenBlocks:
    """Tokenize every record into `seq_len` blocks (truncating, or packing when asked)."""
    pad = pad_token_id(tokenizer)
    examples = [encode(record, tokenizer) for record in dataset.records]
    pieces: list[tuple[list[int], list[int]]] = []
    truncated = dropped = 0
    if packing:
        flat_ids = [t for ids, _ in examples for t in ids]
        flat_labels = [t for _, labels in examples for t in labels]
        for start in range(0, len(flat_ids), seq_len):
            pieces.append((flat_ids[start : start + seq_len], flat_labels[start : start + seq_len]))
    else:
        for ids, labels in examples:
            truncated += len(ids) > seq_len
            pieces.append((ids[:seq_len], labels[:seq_len]))
    input_ids: list[list[int]] = []
    all_labels: list[list[int]] = []
    attention_mask: list[list[int]] = []
    real_tokens = trained_tokens = 0
    for ids, labels in pieces:
        trained = sum(label != IGNORE_INDEX for label in labels)
        if not trained:
            dropped += 1
            continue
        missing = seq_len - len(ids)
        input_ids.append(ids + [pad] * missing)
        all_labels.append(labels + [IGNORE_INDEX] * missing)
        attention_mask.append([1] * len(ids) + [0] * missing)
        real_tokens += len(ids)
        trained_tokens += trained
    if not input_ids:
        raise SwiftplanError(
            f"{dataset.path.name}: no example keeps a trainable token within {seq_len} tokens.",
            hint="The answers start after the sequence length; raise the plan's seq_len or shorten the prompts.",
        )
    return TokenBlocks(input_ids=input_ids, labels=all_labels, attention_mask=attention_mask,
                       real_tokens=real_tokens, trained_tokens=trained_tokens, truncated=truncated,
                       dropped=dropped)  # fmt: skip


def trim_to_longest(batch: dict[str, Any]) -> dict[str, Any]:
    """A micro-batch of right-padded `seq_len` blocks cut to its longest real row (dynamic padding, as the Hugging
    Face collators pad): a lone sample carries no padding, and the rows of a larger batch keep their attention
    mask (RuntimeKnobs.padding 'longest'). The labels of the cut positions were all -100, so the loss is
    unchanged."""
    longest = max(1, int(batch["attention_mask"].sum(dim=1).max()))
    return {key: value[:, :longest] for key, value in batch.items()}
