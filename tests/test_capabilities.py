"""Backend capabilities as data: rules, sources, and the reasons `check` gives."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import pytest

from swiftplan.planner.capabilities import (
    FEATURES,
    advisories,
    capabilities_for,
    check,
    feature_support,
)
from swiftplan.planner.hardware import get_accelerator, list_accelerators


def _raw() -> dict:
    text = resources.files("swiftplan.profiles").joinpath("capabilities.json").read_text(encoding="utf-8")
    return json.loads(text)


def test_every_rule_has_a_source_and_every_no_a_reason():
    for name, feature in _raw()["features"].items():
        assert feature["rules"], name
        for rule in feature["rules"]:
            assert rule["source"].strip(), (name, rule)
            if rule["status"] == "no":
                assert rule.get("reason"), (name, rule)


def test_bf16_rules_agree_with_the_catalog_hardware_flags():
    for acc in list_accelerators():
        verdict = capabilities_for(acc).support["bf16"].status
        assert (verdict == "yes") == acc.bf16_supported, acc.id


def test_fp8_rules_agree_with_the_catalog_hardware_flags():
    for acc in list_accelerators():
        assert capabilities_for(acc).fp8 == acc.fp8_supported, acc.id


@pytest.mark.parametrize(
    ("acc_id", "expected"),
    [
        ("t4", dict(bf16=False, flash_attention_2=False, fp8=False, bnb_4bit=True, bnb_int8=True, vllm=True)),
        ("v100", dict(bf16=False, flash_attention_2=False, bnb_int8=False, vllm=False, deepspeed=True)),
        (
            "a100",
            dict(bf16=True, flash_attention_2=True, fp8=False, bnb_4bit=True, deepspeed=True, vllm=True),
        ),
        ("rtx4090", dict(bf16=True, flash_attention_2=True, fp8=True)),
        ("h100", dict(bf16=True, flash_attention_2=True, fp8=True, bnb_8bit_optimizers=True)),
        ("b200", dict(bf16=True, fp8=True, flash_attention_2=False)),  # FA2 experimental on Blackwell
        (
            "mi300x",
            dict(bf16=True, fp8=True, flash_attention_2=True, bnb_4bit=True, deepspeed=True, vllm=True),
        ),
        ("mi250x", dict(bf16=True, fp8=False, flash_attention_2=True)),
        (
            "910b",
            dict(bf16=True, fp8=False, flash_attention_2=True, bnb_4bit=False, deepspeed=True, vllm=True),
        ),
        (
            "m2-max",
            dict(bf16=True, fp8=False, flash_attention_2=False, bnb_8bit_optimizers=False, deepspeed=False),
        ),
    ],
)
def test_capabilities_per_device(acc_id, expected):
    caps = capabilities_for(get_accelerator(acc_id))
    for feature, value in expected.items():
        assert getattr(caps, feature) is value, (acc_id, feature)


def test_experimental_features_are_allowed_but_not_yes():
    caps = capabilities_for(get_accelerator("b200"))
    assert caps.support["flash_attention_2"].status == "experimental"
    assert caps.allows("flash_attention_2")
    assert not caps.flash_attention_2
    npu = capabilities_for(get_accelerator("910b"))
    assert npu.support["bnb_4bit"].status == "experimental"
    assert "1695" in npu.support["bnb_4bit"].detail


def test_check_names_every_impossible_option():
    reasons = check(
        get_accelerator("t4"),
        precision="amp-bf16",
        quant="nf4",
        optimizer="adamw-8bit",
        zero_stage=2,
        attention="flash",
    )
    assert len(reasons) == 2
    assert "amp-bf16" in reasons[0] and "compute capability 7.5" in reasons[0] and "fp16" in reasons[0]
    assert "FlashAttention-2" not in reasons[0] and "sdpa" in reasons[1]


def test_check_is_empty_when_fine():
    assert (
        check(
            get_accelerator("h100"), precision="bf16", quant="nf4", optimizer="paged-adamw-8bit", zero_stage=3
        )
        == []
    )
    assert check(get_accelerator("t4"), precision="fp16", quant="none", optimizer="adamw", zero_stage=0) == []
    assert (
        check(get_accelerator("910b"), precision="bf16", quant="gptq", optimizer="adamw", zero_stage=0) == []
    )


def test_check_on_apple_and_ascend():
    mac = check(
        get_accelerator("m2-max"), precision="bf16", quant="nf4", optimizer="adamw-8bit", zero_stage=3
    )
    assert len(mac) == 2
    assert any("8-bit optimizers" in reason for reason in mac)
    assert any("DeepSpeed" in reason or "ZeRO" in reason for reason in mac)
    npu = check(get_accelerator("910b"), precision="bf16", quant="int8", optimizer="adamw", zero_stage=3)
    assert npu == [
        "quantization int8 is not possible on Huawei Ascend 910B: bitsandbytes on Ascend NPU implements NF4 only (no LLM.int8())."
    ]


def test_check_rejects_bad_zero_stage_and_fp8_where_missing():
    assert check(get_accelerator("h100"), zero_stage=4) == ["ZeRO stage must be 0, 1, 2 or 3, got 4."]
    assert check(get_accelerator("a100"), precision="fp8")
    assert check(get_accelerator("a100"), quant="fp8")
    assert check(get_accelerator("l40s"), precision="fp8") == []
    assert check(get_accelerator("v100"), serving_engine="vllm")


def test_advisories_cover_experimental_and_unknown():
    notes = advisories(get_accelerator("m2-max"), quant="nf4", serving_engine="vllm")
    assert len(notes) == 2 and all("experimental" in note for note in notes)
    unknown = feature_support("bf16", backend="rocm", compute_capability=None, text="gfx1030 Radeon RX 6800")
    assert unknown.status == "unknown"


def test_feature_support_from_raw_facts_for_probed_devices():
    assert feature_support("bf16", backend="cuda", compute_capability="8.6").status == "yes"
    assert feature_support("bf16", backend="cuda", compute_capability="7.5").status == "no"
    assert feature_support("flash_attention_2", backend="cuda", compute_capability="9.0").status == "yes"
    assert (
        feature_support("flash_attention_2", backend="cuda", compute_capability="12.0").status
        == "experimental"
    )
    assert feature_support("bf16", backend="cuda", compute_capability=None).status == "no"
    assert feature_support("bf16", backend="rocm", text="gfx942:sramecc+:xnack-").status == "yes"
    assert feature_support("bf16", backend="npu", text="Ascend910A").status == "no"
    assert feature_support("bf16", backend="npu", text="Ascend910B4").status == "yes"
    assert set(FEATURES) == set(_raw()["features"])


def test_capabilities_module_stays_pure():
    code = (
        "import sys, swiftplan.planner.capabilities\n"
        "bad = [m for m in ('torch', 'pynvml', 'transformers', 'swiftplan.executors') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
