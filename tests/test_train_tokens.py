"""Tokenization: answer-only labels for alpaca/chat/ShareGPT, full labels for text, truncation and packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.executors.train.data import read_dataset
from swiftplan.executors.train.tokens import IGNORE_INDEX, build_blocks, encode

FIXTURES = Path(__file__).parent / "fixtures" / "train"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "tiny_tokenizer")


def _trained_text(tokenizer, record) -> str:
    ids, labels = encode(record, tokenizer)
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def test_alpaca_loss_only_on_the_output_and_eos(tokenizer):
    record = read_dataset(FIXTURES / "alpaca.jsonl").records[0]
    ids, labels = encode(record, tokenizer)
    assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
    assert _trained_text(tokenizer, record) == "The capital of France is Paris.<|im_end|>"


@pytest.mark.parametrize("name", ["chat", "sharegpt"])
def test_chat_loss_only_on_assistant_turns(tokenizer, name):
    record = read_dataset(FIXTURES / f"{name}.jsonl").records[0]
    assert _trained_text(tokenizer, record) == "The capital of France is Paris.<|im_end|>\n"
    ids, _ = encode(record, tokenizer)
    rendered = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in record.messages], tokenize=False
    )
    assert tokenizer.decode(ids) == rendered  # the segments add up to the whole conversation


def test_multi_turn_chat_trains_every_assistant_turn(tokenizer, tmp_path):
    turns = [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n")
    assert _trained_text(tokenizer, read_dataset(path).records[0]) == "a1<|im_end|>\na2<|im_end|>\n"


def test_text_trains_every_token(tokenizer):
    record = read_dataset(FIXTURES / "text.jsonl").records[0]
    ids, labels = encode(record, tokenizer)
    assert labels[1:] == ids[1:]  # all but BOS


def test_blocks_are_padded_to_seq_len_and_truncated(tokenizer):
    dataset = read_dataset(FIXTURES / "text.jsonl")
    blocks = build_blocks(dataset, tokenizer, seq_len=24, packing=False)
    assert len(blocks.input_ids) == 35 and {len(b) for b in blocks.input_ids} == {24}
    assert blocks.truncated > 0
    first = blocks.attention_mask[0]
    assert all(label == IGNORE_INDEX for label, m in zip(blocks.labels[0], first, strict=True) if m == 0)


def test_packing_fills_blocks(tokenizer):
    dataset = read_dataset(FIXTURES / "text.jsonl")
    total = sum(len(encode(r, tokenizer)[0]) for r in dataset.records)
    blocks = build_blocks(dataset, tokenizer, seq_len=64, packing=True)
    assert len(blocks.input_ids) == -(-total // 64)
    assert blocks.real_tokens == total and all(blocks.attention_mask[0])


def test_answers_beyond_seq_len_are_reported(tokenizer):
    dataset = read_dataset(FIXTURES / "alpaca.jsonl")
    with pytest.raises(SwiftplanError, match="no example keeps a trainable token within 8 tokens"):
        build_blocks(dataset, tokenizer, seq_len=8, packing=False)


def test_chat_needs_a_chat_template(tokenizer):
    record = read_dataset(FIXTURES / "chat.jsonl").records[0]
    plain = tokenizer.__class__.from_pretrained(FIXTURES / "tiny_tokenizer")
    plain.chat_template = None
    with pytest.raises(
        SwiftplanError, match="chat.jsonl line 1: chat data needs a tokenizer with a chat template"
    ):
        encode(record, plain)


def test_a_micro_batch_is_cut_to_its_longest_real_row() -> None:
    """Dynamic padding: right-padded seq_len blocks lose the columns no row uses; a lone sample keeps no padding."""
    import torch

    from swiftplan.executors.train.tokens import trim_to_longest

    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    batch = {
        "input_ids": torch.arange(12).reshape(2, 6),
        "labels": torch.full((2, 6), -100),
        "attention_mask": mask,
    }
    cut = trim_to_longest(batch)
    assert {k: tuple(v.shape) for k, v in cut.items()} == {k: (2, 3) for k in batch}
    assert cut["input_ids"].tolist() == [[0, 1, 2], [6, 7, 8]]
    alone = trim_to_longest({k: v[1:] for k, v in batch.items()})
    assert alone["attention_mask"].tolist() == [[1, 1]]
