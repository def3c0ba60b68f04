"""The DeepSpeed engine's glue, run against a stand-in `deepspeed` module (DeepSpeed needs a GPU and is not
installed in CI): what the loop hands it, that it steps once per accumulation, and what it checkpoints."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from train_support import TINY_MODEL

from swiftplan.executors.train.engine import DeepSpeedEngine
from swiftplan.executors.train.launch import deepspeed_config
from swiftplan.executors.train.loop import run_loop
from swiftplan.executors.train.model import build_optimizer, load_model
from swiftplan.executors.train.run_dir import TrainArgs, latest_checkpoint, read_state
from swiftplan.planner.setup import LoraSetup, Parallelism, TrainSetup


class FakeDeepSpeedEngine:
    """What deepspeed.initialize returns, reduced to the calls the executor makes."""

    def __init__(self, model, optimizer, scheduler, config):
        self.module, self.optimizer, self.scheduler, self.config = model, optimizer, scheduler, config
        self.micro = self.optimizer_steps = 0
        self.saved: list[str] = []

    def __call__(self, **batch):
        return self.module(**batch)

    def backward(self, loss, scale_wrt_gas=True):
        (loss / self.config["gradient_accumulation_steps"] if scale_wrt_gas else loss).backward()
        self.micro += 1
        self.scaled_wrt_gas = scale_wrt_gas

    def step(self):
        if self.micro % self.config["gradient_accumulation_steps"] == 0:
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            self.optimizer_steps += 1

    def get_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def zero_optimization_stage(self):
        return self.config["zero_optimization"]["stage"]

    def save_checkpoint(self, path, tag):
        self.saved.append(f"{path}:{tag}")


@pytest.fixture
def fake_deepspeed(monkeypatch):
    calls = {}

    def initialize(*, model, model_parameters, optimizer, lr_scheduler, config):
        calls.update(model_parameters=model_parameters, optimizer=optimizer, config=config)
        if optimizer is None:  # DeepSpeed builds the optimizer named in the config
            params = config["optimizer"]["params"]
            optimizer = torch.optim.AdamW(
                model_parameters, lr=params["lr"], weight_decay=params["weight_decay"]
            )
        scheduler = lr_scheduler(optimizer)
        calls["engine"] = FakeDeepSpeedEngine(model, optimizer, scheduler, config)
        return calls["engine"], optimizer, None, scheduler

    def install():  # after transformers is imported: it probes find_spec("deepspeed"), which a stand-in fails
        monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
        return calls

    return install


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_deepspeed_engine_steps_once_per_accumulation_and_checkpoints(fake_deepspeed, tmp_path, optimizer):
    setup = TrainSetup(method="lora", precision="fp32", optimizer=optimizer, micro_batch=1, grad_accum=2, seq_len=16,
                       grad_ckpt=False, lora=LoraSetup(rank=4, targets=("q_proj",), dropout=0.0),
                       parallel=Parallelism(zero=2))  # fmt: skip
    config = deepspeed_config(setup, world_size=1, lr=1e-3, weight_decay=0.0, max_grad_norm=1.0)
    model = load_model(
        str(TINY_MODEL), setup, device=torch.device("cpu"), random_init=True, seed=0, vocab_size=512
    )
    params = [p for p in model.parameters() if p.requires_grad]
    calls = fake_deepspeed()
    client = (
        None
        if "optimizer" in config
        else build_optimizer(setup, params, lr=1e-3, weight_decay=0.0, device_type="cpu")
    )
    engine = DeepSpeedEngine(model, client, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                             config=config, device=torch.device("cpu"))  # fmt: skip
    assert (calls["optimizer"] is None) == (optimizer == "adamw")
    assert all(p.requires_grad for p in calls["model_parameters"])
    ids = torch.randint(4, 512, (8, 16))
    data = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    args = TrainArgs(data="d", data_sha256="x", model=str(TINY_MODEL), save_steps=2)
    result = run_loop(engine, data, setup=setup, args=args, run_dir=tmp_path, rank=0, world=1, start_step=0,
                      total_steps=3, device=torch.device("cpu"))  # fmt: skip
    fake = calls["engine"]
    assert (fake.micro, fake.optimizer_steps) == (6, 3)
    assert result.end_step == 3 and len(result.losses) == 3
    # written into .tmp-step-N, then renamed into place once state.json is there
    assert [s.rsplit("/", 1)[-1] for s in fake.saved] == [
        ".tmp-step-000002:deepspeed",
        ".tmp-step-000003:deepspeed",
    ]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step-000002",
        "step-000003",
    ]
    assert read_state(latest_checkpoint(tmp_path))["step"] == 3
    assert fake.scaled_wrt_gas is False  # the loop normalised the loss over the whole step already
