"""The accelerator catalog, name lookup, cluster parsing and probed-name matching."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from importlib import resources

import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.planner.hardware import (
    DEFAULT_INTER_NODE_BYTES_PER_S,
    Accelerator,
    Cluster,
    get_accelerator,
    list_accelerators,
    match_probed_name,
    parse_cluster,
)

GIB = 2**30


def _raw_catalog() -> dict:
    text = resources.files("swiftplan.profiles").joinpath("accelerators.json").read_text(encoding="utf-8")
    return json.loads(text)


# --- catalog ---------------------------------------------------------------------------------------


def test_catalog_loads_every_reference_entry_plus_the_derived_gcd():
    ids = [acc.id for acc in list_accelerators()]
    assert len(ids) == 43  # 42 reference records + mi250x-gcd
    assert len(set(ids)) == len(ids)
    assert "_meta" in _raw_catalog()
    assert "reference" in _raw_catalog()["_meta"]["converted_from"]


def test_every_entry_names_its_source_and_verification():
    for acc_id, entry in _raw_catalog()["accelerators"].items():
        assert entry["source"].strip(), acc_id
        assert entry["verification"], acc_id
    assert all(acc.source for acc in list_accelerators())


@pytest.mark.parametrize(
    ("name", "memory_gib", "bandwidth_bytes_per_s"),
    [
        # GeForce RTX 4090: 24 GB GDDR6X, 1008 GB/s (Ada whitepaper Appendix A).
        ("rtx4090", 24, 1008e9),
        # H100 SXM5: 80 GB HBM3, 3.35 TB/s (H100 SXM datasheet table).
        ("h100-sxm", 80, 3350e9),
        # A100 80GB SXM4: 2,039 GB/s (NVIDIA A100 datasheet, 80 GB SXM column).
        ("a100-80gb-sxm", 80, 2039e9),
        # MI300X: 192 GB HBM3, 5.3 TB/s (AMD datasheet; TechPowerUp's 10.3 TB/s is wrong).
        ("mi300x", 192, 5300e9),
        # Tesla T4: 16 GB GDDR6, 320 GB/s (T4 datasheet '320+ GB/s').
        ("t4", 16, 320e9),
    ],
)
def test_known_cards_have_datasheet_memory_and_bandwidth(name, memory_gib, bandwidth_bytes_per_s):
    acc = get_accelerator(name)
    assert acc.memory_bytes == memory_gib * GIB  # vendors size DRAM in binary units
    assert acc.memory_bandwidth_bytes_per_s == pytest.approx(bandwidth_bytes_per_s)


def test_dense_flops_are_dense_not_sparse():
    # H100 SXM datasheet prints BF16 1,979 TFLOPS *with sparsity*; dense is half.
    assert get_accelerator("h100").bf16_flops == pytest.approx(989.5e12)
    # A100 whitepaper: 312 dense BF16 (624 sparse); FP32 vector 19.5.
    a100 = get_accelerator("A100")
    assert a100.dense_flops("bf16") == pytest.approx(312e12)
    assert a100.dense_flops("fp32") == pytest.approx(19.5e12)
    # GeForce: the FP32-accumulate figure (Ada whitepaper: 165.2 dense), not the 330.3 FP16-accumulate one.
    assert get_accelerator("4090").dense_flops("bf16") == pytest.approx(165.2e12)


def test_unknown_figures_stay_null():
    assert get_accelerator("910B").memory_bandwidth_bytes_per_s is None  # sources conflict
    assert get_accelerator("a10g").bf16_flops is None  # AWS publishes no tensor rate
    assert get_accelerator("m3-max").fp32_flops is None  # Apple stopped publishing TFLOPS


def test_interconnect_nvlink_is_per_direction_and_bridges_are_optional():
    h100 = get_accelerator("h100-sxm")
    assert h100.nvlink_bytes_per_s == pytest.approx(450e9)  # 900 GB/s bidirectional
    assert h100.intra_node_bytes_per_s == pytest.approx(450e9)
    a100_pcie = get_accelerator("a100-80gb-pcie")
    assert a100_pcie.nvlink_bytes_per_s is None
    assert a100_pcie.nvlink_bridge_bytes_per_s == pytest.approx(300e9)
    assert a100_pcie.intra_node_bytes_per_s == pytest.approx(31.5e9)  # PCIe Gen4 x16 per direction
    assert get_accelerator("4060ti-16gb").pcie_bytes_per_s == pytest.approx(15.8e9)  # x8 card


def test_prices_and_unified_memory():
    assert get_accelerator("h100").price_usd_per_hour == pytest.approx(2.49)  # cheapest quote: Lambda
    assert "Lambda" in get_accelerator("h100").price_source
    assert get_accelerator("b200").price_usd_per_hour is None
    assert get_accelerator("rtx4090").launch_price_usd == 1599
    assert get_accelerator("m2-max").unified_memory
    assert not get_accelerator("rtx4090").unified_memory


def test_mi250x_gcd_is_half_a_package():
    package, gcd = get_accelerator("mi250x"), get_accelerator("mi250x-gcd")
    assert gcd.memory_bytes * 2 == package.memory_bytes
    assert gcd.bf16_flops * 2 == pytest.approx(package.bf16_flops)


def test_loader_rejects_unknown_keys():
    from swiftplan.planner import hardware

    entry = dict(_raw_catalog()["accelerators"]["rtx4090"], memory_gb=24)
    with pytest.raises(ValueError, match="unknown keys"):
        hardware._accelerator_from_entry("rtx4090", entry)


# --- dense_flops fallbacks ---------------------------------------------------------------------------


def test_dense_flops_falls_back_sensibly():
    t4 = get_accelerator("t4")  # no bf16, no fp8: both fall back to the FP16 tensor rate
    assert t4.dense_flops_basis("bf16") == ("fp16", pytest.approx(65e12))
    assert t4.dense_flops_basis("fp8") == ("fp16", pytest.approx(65e12))
    assert t4.dense_flops_basis("tf32") == ("fp32", pytest.approx(8.1e12))
    assert get_accelerator("a10g").dense_flops_basis("bf16") == ("fp32", pytest.approx(31.52e12))
    assert get_accelerator("910B").dense_flops_basis("bf16") == ("fp16", pytest.approx(320e12))
    assert get_accelerator("h100").dense_flops("fp8") == pytest.approx(1979e12)
    with pytest.raises(ValueError):
        t4.dense_flops("fp64")


def test_dense_flops_without_any_figure_is_a_user_error():
    with pytest.raises(SwiftplanError, match="No published throughput"):
        get_accelerator("m4-max").dense_flops("bf16")


# --- lookup ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected_id"),
    [
        ("rtx4090", "rtx4090"),
        ("4090", "rtx4090"),
        ("RTX 4090", "rtx4090"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("nvidia-rtx-4090", "rtx4090"),  # the reference id
        ("A100-80G", "a100-80gb-sxm"),
        ("a100-80gb", "a100-80gb-sxm"),
        ("A100", "a100-80gb-sxm"),
        ("a100_40gb", "a100-40gb-sxm"),
        ("H100", "h100-sxm"),
        ("h100 pcie", "h100-pcie"),
        ("H200", "h200-sxm"),
        ("B200", "b200"),
        ("L40S", "l40s"),
        ("T4", "t4"),
        ("V100", "v100-sxm2-16gb"),
        ("MI300X", "mi300x"),
        ("910B", "ascend910b"),
        ("ascend910b", "ascend910b"),
        ("m2-max", "m2-max"),
        ("M2 Max", "m2-max"),
        ("Apple M2 Max", "m2-max"),
    ],
)
def test_get_accelerator_forgives_spelling(name, expected_id):
    assert get_accelerator(name).id == expected_id


def test_no_alias_points_at_two_entries():
    seen: dict[str, str] = {}
    from swiftplan.planner.hardware import _normalize

    for acc in list_accelerators():
        for alias in (acc.id, *acc.aliases):
            key = _normalize(alias)
            assert seen.setdefault(key, acc.id) == acc.id, f"{alias!r} is claimed by {seen[key]} and {acc.id}"


def test_unknown_gpu_names_close_matches_and_the_gpus_command():
    with pytest.raises(SwiftplanError) as excinfo:
        get_accelerator("rtx4091")
    assert "rtx4091" in excinfo.value.message
    assert "rtx4090" in excinfo.value.hint
    assert "swiftplan gpus" in excinfo.value.hint


# --- clusters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nodes", "gpus_per_node", "acc_id"),
    [
        ("rtx4090", 1, 1, "rtx4090"),
        ("4xA100-80G", 1, 4, "a100-80gb-sxm"),
        ("8xh100", 1, 8, "h100-sxm"),
        ("8 × H100", 1, 8, "h100-sxm"),
        ("2x8xH100", 2, 8, "h100-sxm"),
        ("2X4x4090", 2, 4, "rtx4090"),
    ],
)
def test_parse_cluster(text, nodes, gpus_per_node, acc_id):
    cluster = parse_cluster(text)
    assert (cluster.nodes, cluster.gpus_per_node, cluster.accelerator.id) == (nodes, gpus_per_node, acc_id)
    assert cluster.world_size == nodes * gpus_per_node


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0xh100", "Bad GPU count '0'"),
        ("-2xh100", "Bad GPU count '-2'"),
        ("1.5xh100", "Bad GPU count '1.5'"),
        ("4x", "No GPU model"),
        ("2x2x2xh100", "Too many counts"),
        ("abcxh100", "Unknown GPU"),
        ("auto", "'auto'"),
    ],
)
def test_parse_cluster_rejects_bad_input(text, fragment):
    with pytest.raises(SwiftplanError, match=fragment):
        parse_cluster(text)


def test_cluster_describe_and_defaults():
    single = parse_cluster("rtx4090")
    assert single.describe() == "1 × NVIDIA GeForce RTX 4090"
    multi = parse_cluster("2x8xH100")
    assert multi.describe() == "2 nodes × 8 × NVIDIA H100 SXM5 80GB"
    assert multi.inter_node_bytes_per_s == DEFAULT_INTER_NODE_BYTES_PER_S == 12.5e9
    # plans use what the driver reports to PyTorch (79.11 GiB on an H100 80GB), not the 80 GiB on the box
    assert multi.memory_bytes_per_device == round(79.11 * GIB)


def test_plans_use_the_memory_the_driver_reports():
    """ECC GDDR cards lose 1/16 (a T4's 16 GiB shows 15360 MiB, PyTorch 14.56 GiB); an entry without a report
    plans with its physical memory; every report is below the physical memory and names its source."""
    t4 = get_accelerator("t4")
    assert t4.driver_memory_bytes is not None and t4.driver_memory_bytes < 15 * GIB
    assert Cluster(accelerator=t4).memory_bytes_per_device == t4.driver_memory_bytes
    reported = [a for a in list_accelerators() if a.driver_memory_bytes is not None]
    assert len(reported) >= 30
    for acc in reported:
        assert 0.9 * acc.memory_bytes < acc.driver_memory_bytes < acc.memory_bytes, acc.id
        assert acc.driver_memory_source, acc.id
    unknown = next(a for a in list_accelerators() if a.driver_memory_bytes is None and not a.unified_memory)
    assert Cluster(accelerator=unknown).memory_bytes_per_device == unknown.memory_bytes


def test_usable_memory_override():
    acc = get_accelerator("rtx4090")
    cluster = Cluster(accelerator=acc, usable_memory_bytes=10 * GIB)
    assert cluster.memory_bytes_per_device == 10 * GIB
    assert "10.0 GiB usable each" in cluster.describe()
    with pytest.raises(SwiftplanError):
        Cluster(accelerator=acc, gpus_per_node=0)
    with pytest.raises(SwiftplanError):
        Cluster(accelerator=acc, usable_memory_bytes=0)


def test_accelerator_validates_itself():
    acc = get_accelerator("rtx4090")
    with pytest.raises(ValueError, match="source"):
        dataclasses.replace(acc, source=" ")
    with pytest.raises(ValueError, match="memory_bytes"):
        dataclasses.replace(acc, memory_bytes=0)
    with pytest.raises(ValueError, match="backend"):
        dataclasses.replace(acc, backend="tpu")
    assert isinstance(acc, Accelerator)


# --- probed names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probed", "memory_bytes", "expected_id"),
    [
        ("NVIDIA GeForce RTX 4090", 24564 * 2**20, "rtx4090"),
        ("NVIDIA A100-SXM4-80GB", 81920 * 2**20, "a100-80gb-sxm"),
        ("NVIDIA H100 80GB HBM3", 81559 * 2**20, "h100-sxm"),
        ("NVIDIA H100 PCIe", 81559 * 2**20, "h100-pcie"),
        ("Tesla T4", 15360 * 2**20, "t4"),
        ("Ascend910B3", 65536 * 2**20, "ascend910b"),
        ("Apple M2 Max", 32 * GIB, "m2-max"),  # unified memory: a smaller configuration is fine
        ("NVIDIA GeForce RTX 3080", 10 * GIB - 300 * 2**20, "rtx3080-10gb"),
        ("NVIDIA GeForce RTX 3080", 12 * GIB - 300 * 2**20, "rtx3080-12gb"),
        ("AMD Instinct MI250X/MI250", 64 * GIB, "mi250x-gcd"),
    ],
)
def test_match_probed_name(probed, memory_bytes, expected_id):
    assert match_probed_name(probed, memory_bytes).id == expected_id


@pytest.mark.parametrize(
    ("probed", "memory_bytes"),
    [
        ("NVIDIA H100 NVL", 94 * 10**9),  # not in the catalog
        ("Ascend910B4", 32768 * 2**20),  # 32 GB variant: the 64 GB entry would overstate it
        ("NVIDIA GeForce RTX 4060 Ti", 8 * GIB),  # 8 GB variant: only the 16 GB card is catalogued
        ("Some Future GPU", 100 * GIB),
    ],
)
def test_match_probed_name_refuses_implausible_matches(probed, memory_bytes):
    assert match_probed_name(probed, memory_bytes) is None


def test_hardware_module_stays_pure():
    code = (
        "import sys, swiftplan.planner.hardware\n"
        "bad = [m for m in ('torch', 'pynvml', 'transformers', 'swiftplan.executors') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# --- `swiftplan gpus` --------------------------------------------------------------------------------------


def _gpus_app():
    import typer

    from swiftplan.cli import gpus

    app = typer.Typer()
    gpus.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `gpus` a subcommand
    return app


def test_gpus_command_table_and_json():
    from typer.testing import CliRunner

    runner = CliRunner()
    table = runner.invoke(_gpus_app(), ["gpus"])
    assert table.exit_code == 0, table.output
    assert "rtx4090" in table.output and "h100-sxm" in table.output
    rows = json.loads(runner.invoke(_gpus_app(), ["gpus", "--json"]).output)
    assert len(rows) == len(list_accelerators())
    row = next(r for r in rows if r["id"] == "rtx4090")
    assert row["memory_bytes"] == 24 * GIB and row["dense_bf16_flops"] == pytest.approx(165.2e12)
    assert row["source"]
    only_rocm = json.loads(runner.invoke(_gpus_app(), ["gpus", "--json", "--backend", "rocm"]).output)
    assert {r["id"] for r in only_rocm} == {"mi250x", "mi250x-gcd", "mi300x"}


def test_gpus_command_rejects_unknown_backend():
    from typer.testing import CliRunner

    result = CliRunner().invoke(_gpus_app(), ["gpus", "--backend", "tpu"])
    assert isinstance(result.exception, SwiftplanError)
    assert "cuda, rocm, npu, mps" in result.exception.message


def test_gpus_help_has_examples():
    from typer.testing import CliRunner

    result = CliRunner().invoke(_gpus_app(), ["gpus", "--help"])
    assert "swiftplan gpus --json" in result.output
