"""Gradient-accumulation loss normalisation: one optimizer step of swiftplan's loop equals one step of the
real transformers Trainer on the same inputs.

The Trainer (transformers 5.25.0, trainer.py: `_get_num_items_in_batch`, `compute_loss`, `training_step`)
divides the summed token loss of every micro-batch by the label tokens of the whole optimizer step
(labels[..., 1:] != -100 over all micro-batches, gathered over ranks), instead of averaging per-micro-batch
means: with variable-length, padded data the two differ, and the test checks it would notice.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from train_support import FIXTURES, TINY_MODEL, cli, train_args, write_plan

from swiftplan.executors.train.engine import TorchEngine
from swiftplan.executors.train.loop import micro_batches, run_loop
from swiftplan.executors.train.model import load_model
from swiftplan.executors.train.run_dir import TrainArgs
from swiftplan.planner.setup import TrainSetup

LR = 1.0  # SGD with lr 1: the parameter change is the gradient itself (AdamW's first step is ~sign(g))
SETUP = TrainSetup(method="full", precision="fp32", optimizer="sgd", micro_batch=2, grad_accum=4, seq_len=24,
                   grad_ckpt=False, lora=None)  # fmt: skip


def _padded_data(n: int) -> dict[str, torch.Tensor]:
    """`n` right-padded blocks of 3..24 tokens whose first few (a 'prompt') are masked out of the loss."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.zeros(n, SETUP.seq_len, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row in range(n):
        length = int(torch.randint(3, SETUP.seq_len + 1, (1,), generator=generator))
        prompt = int(torch.randint(0, length - 1, (1,), generator=generator))
        ids[row, :length] = torch.randint(4, 512, (length,), generator=generator)
        mask[row, :length] = 1
        labels[row, prompt:length] = ids[row, prompt:length]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _model() -> torch.nn.Module:
    model = load_model(
        str(TINY_MODEL), SETUP, device=torch.device("cpu"), random_init=True, seed=0, vocab_size=512
    )
    assert model.config.attention_dropout == 0.0  # nothing random in the forward pass
    return model


def _swiftplan_step(model: torch.nn.Module, data: dict[str, torch.Tensor], tmp_path) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    engine = TorchEngine(
        model, optimizer, scheduler, setup=SETUP, device=torch.device("cpu"), world=1, max_grad_norm=0
    )
    args = TrainArgs(
        data="d", data_sha256="x", model=str(TINY_MODEL), max_grad_norm=0, lr=LR, lr_scheduler="constant"
    )
    run_loop(engine, data, setup=SETUP, args=args, run_dir=tmp_path, rank=0, world=1, start_step=0, total_steps=1,
             device=torch.device("cpu"))  # fmt: skip


def _trainer_step(model: torch.nn.Module, rows: list[dict[str, torch.Tensor]], tmp_path) -> None:
    from transformers import Trainer, TrainingArguments, default_data_collator

    class InOrder(Trainer):  # the rows are already in the loop's order for step 0
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=SETUP.micro_batch,
                             gradient_accumulation_steps=SETUP.grad_accum, max_steps=1, learning_rate=LR,
                             lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, report_to="none",
                             save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
                             remove_unused_columns=False, seed=0)  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    trainer = InOrder(model=model, args=args, train_dataset=rows, data_collator=default_data_collator,
                      optimizers=(optimizer, scheduler))  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 1


def _mean_of_means_step(
    model: torch.nn.Module, data: dict[str, torch.Tensor], order: list[list[int]]
) -> None:
    """What the loop did before: each micro-batch's mean loss / grad_accum."""
    for indices in order:
        batch = {key: value[torch.tensor(indices)] for key, value in data.items()}
        (model(**batch).loss / SETUP.grad_accum).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_one_step_equals_the_transformers_trainers(tmp_path):
    n = SETUP.micro_batch * SETUP.grad_accum
    data = _padded_data(n)
    order = micro_batches(0, n_blocks=n, setup=SETUP, seed=42, rank=0, world=1)
    rows = [{key: value[i] for key, value in data.items()} for batch in order for i in batch]
    counts = [int((data["labels"][torch.tensor(b)][:, 1:] != -100).sum()) for b in order]
    assert len(set(counts)) > 1, counts  # micro-batches of different sizes, or the test could not fail
    ours, theirs, before = _model(), None, None
    theirs, before, old = copy.deepcopy(ours), copy.deepcopy(ours), copy.deepcopy(ours)
    _swiftplan_step(ours, data, tmp_path)
    _trainer_step(theirs, rows, tmp_path)
    _mean_of_means_step(old, data, order)
    mine, hf, prev, legacy = (dict(m.named_parameters()) for m in (ours, theirs, before, old))
    assert any(not torch.equal(mine[k], prev[k]) for k in mine)  # a step happened
    worst_old = 0.0
    for name, value in hf.items():
        torch.testing.assert_close(mine[name], value, rtol=1e-5, atol=1e-6, msg=name)
        worst_old = max(worst_old, float((legacy[name] - value).detach().abs().max()))
    assert worst_old > 1e-3  # the mean of micro-batch means is measurably different


@pytest.mark.slow
@pytest.mark.integration
def test_two_ranks_step_like_one_process_with_the_same_blocks(tmp_path):
    """The label-token count is all-reduced: 2 DDP ranks × micro-batch 2 take the same step as one process ×
    micro-batch 4 over the same 8 blocks (the sharding hands the union of both ranks' blocks to the one
    process), through the real torchrun launch."""
    from safetensors.torch import load_file

    common = (
        "--max-steps",
        "1",
        "--lr",
        "0.5",
        "--lr-scheduler",
        "constant",
        "--max-grad-norm",
        "0",
        "--seed",
        "7",
    )
    one = write_plan(tmp_path / "one.yaml", optimizer="sgd", micro_batch=4, grad_accum=2)
    two = write_plan(
        tmp_path / "two.yaml", cluster="2xrtx4090", gpus=2, optimizer="sgd", micro_batch=2, grad_accum=2
    )
    data = FIXTURES / "chat.jsonl"
    single = cli(*train_args(one, data, tmp_path / "one"), *common)
    assert single.exit_code == 0, (single.output, single.exception)
    ddp = cli(*train_args(two, data, tmp_path / "two"), "--nproc-per-node", "2", *common)
    assert ddp.exit_code == 0, (ddp.output, ddp.exception)
    samples = [json.loads(line)["samples_rank0"] for line in (tmp_path / "one" / "metrics.jsonl").open()]
    assert len(samples[0]) == 8
    a = load_file(tmp_path / "one" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(t.abs().max() > 0 for k, t in a.items() if "lora_B" in k)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7, msg=key)
