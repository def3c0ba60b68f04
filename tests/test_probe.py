"""Probe backends driven at their library boundary (pynvml functions, npu-smi text, a fake torch),
and the cluster the planner gets from a probe. Fixtures: tests/fixtures/probe/ (see its README)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pynvml
import pytest

from swiftplan.errors import SwiftplanError
from swiftplan.executors.probe import ProbeResult, cluster_from_probe, probe
from swiftplan.executors.probe.ascend import parse_npu_smi_info, probe_ascend
from swiftplan.executors.probe.host import parse_meminfo, probe_host
from swiftplan.executors.probe.nvml import probe_nvml
from swiftplan.executors.probe.result import BackendReport
from swiftplan.executors.probe.torch_backend import probe_torch

FIXTURES = Path(__file__).parent / "fixtures" / "probe"
MiB, GiB = 2**20, 2**30


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# --- a fake NVML: real pynvml error classes, recorded-style answers ----------------------------------------


class FakeHandle:
    def __init__(self, index: int, mig: dict | None = None) -> None:
        self.index, self.mig = index, mig


def _nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml maps the code to its subclass (NVMLError_NotSupported, ...)


class FakeNvml:
    """Answers pynvml calls from a fixture dict; install() monkeypatches the real module's functions."""

    def __init__(self, spec: dict, init_error: int | None = None) -> None:
        self.spec, self.init_error, self.shutdown_called = spec, init_error, False

    def _gpu(self, handle: FakeHandle) -> dict:
        return self.spec["devices"][handle.index]

    def _links(self, handle: FakeHandle, link: int) -> dict:
        links = self._gpu(handle)["nvlink"]
        if links == "not_supported":
            raise _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= len(links):
            raise _nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return links[link]

    def nvmlInit(self):
        if self.init_error is not None:
            raise _nvml_error(self.init_error)

    def nvmlShutdown(self):
        self.shutdown_called = True

    def nvmlSystemGetDriverVersion(self):
        return self.spec["driver_version"]

    def nvmlSystemGetCudaDriverVersion(self):
        return self.spec["cuda_driver_version"]

    def nvmlDeviceGetCount(self):
        return len(self.spec["devices"])

    def nvmlDeviceGetHandleByIndex(self, index):
        return FakeHandle(index)

    def nvmlDeviceGetName(self, handle):
        return handle.mig["name"] if handle.mig else self._gpu(handle)["name"]

    def nvmlDeviceGetUUID(self, handle):
        return handle.mig["uuid"] if handle.mig else self._gpu(handle)["uuid"]

    def nvmlDeviceGetPciInfo(self, handle):
        return types.SimpleNamespace(busId=self._gpu(handle)["bus_id"].encode())

    def nvmlDeviceGetMemoryInfo(self, handle):
        if handle.mig:
            total, free = handle.mig["total"], handle.mig["free"]
            return types.SimpleNamespace(total=total, free=free, used=total - free)
        return types.SimpleNamespace(**self._gpu(handle)["memory"])

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return tuple(self._gpu(handle)["compute_capability"])

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle):
        return self._gpu(handle)["pcie"]["max_gen"]

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle):
        return self._gpu(handle)["pcie"]["max_width"]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle):
        return self._gpu(handle)["pcie"]["gen"]

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle):
        return self._gpu(handle)["pcie"]["width"]

    def nvmlDeviceGetNvLinkState(self, handle, link):
        return self._links(handle, link).get("state", pynvml.NVML_FEATURE_ENABLED)

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle, link):
        to = self._links(handle, link)["to"]
        return pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH if to == "switch" else pynvml.NVML_NVLINK_DEVICE_TYPE_GPU

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle, link):
        remote = self._links(handle, link).get("remote_bus_id", "00000000:00:00.0")
        return types.SimpleNamespace(busId=remote.encode())

    def nvmlDeviceGetMigMode(self, handle):
        mig = self._gpu(handle)["mig"]
        if mig == "not_supported":
            raise _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [mig["current"], mig["pending"]]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return self._gpu(handle)["mig"]["max_devices"]

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, slot):
        for instance in self._gpu(handle)["mig"]["instances"]:
            if instance["slot"] == slot:
                return FakeHandle(handle.index, mig=instance)
        raise _nvml_error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        procs = self._gpu(handle)["processes"]
        return [types.SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used"]) for p in procs]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self


def nvml_result(monkeypatch, fixture: str, environ: dict | None = None) -> ProbeResult:
    FakeNvml(load(fixture)).install(monkeypatch)
    return probe(backends=(("nvml", lambda: probe_nvml(environ or {})),))


# --- NVML ------------------------------------------------------------------------------------------------


def test_h100_node_with_nvswitch(monkeypatch):
    fake = FakeNvml(load("nvml_8x_h100_nvswitch.json")).install(monkeypatch)
    report = probe_nvml({})
    assert fake.shutdown_called
    assert report.driver_version == "550.54.15" and report.runtime_version == "CUDA 12.4"
    assert [d.index for d in report.devices] == list(range(8))
    first = report.devices[0]
    assert first.name == "NVIDIA H100 80GB HBM3" and first.compute_capability == "9.0"
    assert (first.pcie_gen, first.pcie_width) == (5, 16)
    assert first.nvlink_active_links == 18 and first.nvlink_to_switch and not first.mig_enabled

    cluster = cluster_from_probe(ProbeResult(host=probe_host(), backend="cuda", devices=report.devices))
    assert cluster.accelerator.id == "h100-sxm"
    assert cluster.world_size == 8
    assert cluster.intra_node_bytes_per_s == pytest.approx(450e9)  # NVLink 4: 900 GB/s bidirectional
    assert cluster.memory_bytes_per_device == 81559 * MiB  # what the driver reports, not the marketed 80 GiB
    assert cluster.notes == ()


def test_cuda_visible_devices_indices_and_uuid_prefixes(monkeypatch):
    result = nvml_result(
        monkeypatch,
        "nvml_8x_h100_nvswitch.json",
        {"CUDA_VISIBLE_DEVICES": "5, GPU-6b1c6c5e-4d2f-7a3e-9c1d-02"},
    )
    buses = [gpu["bus_id"] for gpu in load("nvml_8x_h100_nvswitch.json")["devices"]]
    assert [d.bus_id for d in result.devices] == [buses[5], buses[2]]  # CUDA's order, renumbered from 0
    assert [d.index for d in result.devices] == [0, 1]
    assert cluster_from_probe(result).intra_node_bytes_per_s == pytest.approx(450e9)


def test_cuda_visible_devices_stops_at_the_first_bad_entry(monkeypatch):
    result = nvml_result(monkeypatch, "nvml_8x_h100_nvswitch.json", {"CUDA_VISIBLE_DEVICES": "0,7,bogus,3"})
    assert len(result.devices) == 2
    assert any("'bogus'" in warning for warning in result.warnings)


def test_empty_cuda_visible_devices_hides_every_gpu(monkeypatch):
    result = nvml_result(monkeypatch, "nvml_8x_h100_nvswitch.json", {"CUDA_VISIBLE_DEVICES": ""})
    assert not result.has_accelerator
    assert any("empty" in warning for warning in result.warnings)


def test_mixed_gpus_with_partial_nvlink(monkeypatch):
    result = nvml_result(monkeypatch, "nvml_mixed_partial_nvlink.json")
    devices = result.devices
    assert [d.nvlink_peers for d in devices] == [(1,), (0,), ()]
    assert devices[0].pcie_gen == 4 and devices[0].pcie_gen_current == 1  # idle link trains down
    cluster = cluster_from_probe(result)
    assert cluster.accelerator.id == "rtx3060-12gb"  # plan for the smallest
    assert cluster.world_size == 3
    assert cluster.intra_node_bytes_per_s == pytest.approx(16 * 1.969e9)  # PCIe Gen4 x16, not NVLink
    assert any("Mixed GPUs" in note and "2 × NVIDIA GeForce RTX 3090" in note for note in cluster.notes)
    assert any("only some GPUs" in note for note in cluster.notes)


def test_two_bridged_cards_use_the_bridge(monkeypatch):
    result = nvml_result(monkeypatch, "nvml_mixed_partial_nvlink.json", {"CUDA_VISIBLE_DEVICES": "0,1"})
    cluster = cluster_from_probe(result)
    assert cluster.accelerator.id == "rtx3090"
    assert cluster.intra_node_bytes_per_s == pytest.approx(56.25e9)  # 112.5 GB/s bridge, per direction


def test_mig_plans_for_one_slice(monkeypatch):
    result = nvml_result(monkeypatch, "nvml_a100_mig.json")
    (device,) = result.devices
    assert device.mig_enabled and [m.name.split()[-1] for m in device.mig_instances] == ["3g.40gb", "2g.20gb"]
    assert device.nvlink_active_links == 0
    cluster = cluster_from_probe(result)
    assert cluster.accelerator.id == "a100-80gb-sxm"
    assert cluster.memory_bytes_per_device == 19956 * MiB  # the smaller slice's free memory
    assert any("MIG" in note for note in cluster.notes)


def test_mig_uuid_in_cuda_visible_devices(monkeypatch):
    env = {"CUDA_VISIBLE_DEVICES": "MIG-a3f1c5e7-9b2d-5f4e-8a6c-0d2e4f6a8b0c"}
    result = nvml_result(monkeypatch, "nvml_a100_mig.json", env)
    (device,) = result.devices
    assert [m.name for m in device.mig_instances] == ["NVIDIA A100-SXM4-80GB MIG 3g.40gb"]
    assert cluster_from_probe(result).memory_bytes_per_device == 40180 * MiB


def test_gpu_half_full_uses_free_memory(monkeypatch):
    result = nvml_result(monkeypatch, "nvml_4090_busy.json")
    assert result.devices[0].processes[0].pid == 31337
    cluster = cluster_from_probe(result)
    assert cluster.accelerator.id == "rtx4090"
    assert cluster.memory_bytes_per_device == (24564 - 12600) * MiB
    (note,) = cluster.notes
    assert "pid 31337" in note and "free" in note
    assert "usable each" in cluster.describe()


def test_slow_pcie_slot_and_missing_nvlink_are_reported(monkeypatch):
    spec = load("nvml_8x_h100_nvswitch.json")
    for gpu in spec["devices"]:
        gpu["pcie"]["max_gen"], gpu["pcie"]["max_width"] = 4, 8
        gpu["nvlink"] = [{"state": 0} for _ in range(18)]  # fabric manager not running
    FakeNvml(spec).install(monkeypatch)
    cluster = cluster_from_probe(probe(backends=(("nvml", lambda: probe_nvml({})),)))
    assert cluster.accelerator.pcie_bytes_per_s == pytest.approx(8 * 1.969e9)
    assert cluster.intra_node_bytes_per_s == pytest.approx(8 * 1.969e9)
    assert any("Gen4 x8" in note for note in cluster.notes)
    assert any("fabricmanager" in note for note in cluster.notes)


def test_unknown_gpu_gets_probed_memory_and_borrowed_rough_speed(monkeypatch):
    spec = load("nvml_4090_busy.json")
    gpu = spec["devices"][0]
    gpu.update(name="NVIDIA H100 NVL", compute_capability=[9, 0], processes=[])
    gpu["memory"] = {"total": 95830 * MiB, "free": 95300 * MiB, "used": 530 * MiB}
    FakeNvml(spec).install(monkeypatch)
    cluster = cluster_from_probe(probe(backends=(("nvml", lambda: probe_nvml({})),)))
    acc = cluster.accelerator
    assert not acc.from_catalog and acc.memory_bytes == 95830 * MiB
    assert acc.bf16_supported and acc.fp8_supported  # from the capability rules for cc 9.0
    assert acc.dense_flops("bf16") > 0
    assert any("rough" in note and "not in swiftplan's catalog" in note for note in cluster.notes)


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML library not found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "not loaded"),
    ],
)
def test_missing_driver_is_a_note_not_an_error(monkeypatch, code, fragment):
    FakeNvml(load("nvml_4090_busy.json"), init_error=code).install(monkeypatch)
    report = probe_nvml({})
    assert report.devices == () and fragment in report.note


# --- no accelerator -------------------------------------------------------------------------------------


def _cpu_only_backends():
    return (
        ("nvml", lambda: BackendReport(backend="cuda", note="no NVIDIA driver (NVML library not found)")),
        ("ascend", lambda: probe_ascend({}, has_torch_npu=lambda: False, npu_smi=lambda: None)),
        ("torch", lambda: probe_torch(system="linux", path_exists=lambda path: False)),
    )


def test_cpu_only_host_is_a_valid_result(tmp_path):
    result = probe(backends=_cpu_only_backends(), disk_path=tmp_path)
    assert not result.has_accelerator and result.backend is None
    assert [a.split(":")[0] for a in result.attempts] == ["nvml", "ascend", "torch"]
    assert "not tried" in result.attempts[2]
    assert result.host.logical_cpus >= 1 and result.host.disk_free_bytes > 0


def test_cluster_from_probe_without_accelerator_explains_what_to_do():
    result = probe(backends=_cpu_only_backends())
    with pytest.raises(SwiftplanError) as excinfo:
        cluster_from_probe(result)
    message = excinfo.value.message
    assert "No accelerator found" in message and "--gpus rtx4090" in message and "swiftplan size" in message
    assert "NVML library not found" in message
    assert "swiftplan probe" in excinfo.value.hint


def test_real_probe_on_this_host_does_not_fail():
    result = probe()
    assert isinstance(result, ProbeResult) and result.host.logical_cpus >= 1


# --- Ascend ---------------------------------------------------------------------------------------------


def test_parse_npu_smi_910b3():
    devices, version = parse_npu_smi_info((FIXTURES / "npu_smi_910b3.txt").read_text())
    assert version == "24.1.rc1.b030"
    assert [d.name for d in devices] == ["Ascend910B3"] * 4
    assert devices[0].total_memory_bytes == 65536 * MiB
    assert devices[0].used_memory_bytes == 53984 * MiB and devices[1].used_memory_bytes == 3314 * MiB
    assert devices[0].bus_id == "0000:C1:00.0"
    assert [(p.pid, p.used_memory_bytes) for p in devices[0].processes] == [(1712733, 50656 * MiB)]
    assert devices[1].processes == ()


def test_ascend_probe_and_cluster():
    text = (FIXTURES / "npu_smi_910b3.txt").read_text()
    report = probe_ascend({}, has_torch_npu=lambda: False, npu_smi=lambda: text)
    assert report.backend == "npu" and len(report.devices) == 4
    cluster = cluster_from_probe(ProbeResult(host=probe_host(), backend="npu", devices=report.devices))
    assert cluster.accelerator.id == "ascend910b" and cluster.world_size == 4
    assert cluster.memory_bytes_per_device == (65536 - 53984) * MiB  # NPU 0 is busy
    assert any("pid 1712733" in note for note in cluster.notes)


def test_ascend_visible_devices():
    text = (FIXTURES / "npu_smi_910b3.txt").read_text()
    report = probe_ascend(
        {"ASCEND_RT_VISIBLE_DEVICES": "2,3"}, has_torch_npu=lambda: False, npu_smi=lambda: text
    )
    assert [d.index for d in report.devices] == [0, 1]
    assert [d.bus_id for d in report.devices] == ["0000:81:00.0", "0000:82:00.0"]


def test_ascend_910b4_is_not_mistaken_for_the_64gb_part():
    text = (FIXTURES / "npu_smi_910b4.txt").read_text()
    report = probe_ascend({}, has_torch_npu=lambda: False, npu_smi=lambda: text)
    (device,) = report.devices
    assert device.name == "Ascend910B4" and device.total_memory_bytes == 32 * GiB
    cluster = cluster_from_probe(ProbeResult(host=probe_host(), backend="npu", devices=report.devices))
    assert not cluster.accelerator.from_catalog
    assert cluster.accelerator.bf16_supported  # 910B family
    assert cluster.memory_bytes_per_device == (32768 - 2871) * MiB  # Ascend's idle reserve is not usable
    assert len(cluster.notes) == 1  # only the not-in-catalog note: an idle reserve is not "other processes"


def test_broken_torch_npu_falls_back_to_npu_smi(monkeypatch):
    import swiftplan.executors.probe.ascend as ascend

    def broken():
        raise RuntimeError("libascendcl.so: cannot open shared object file")

    monkeypatch.setattr(ascend, "_probe_torch_npu", broken)
    text = (FIXTURES / "npu_smi_910b3.txt").read_text()
    report = probe_ascend({}, has_torch_npu=lambda: True, npu_smi=lambda: text)
    assert len(report.devices) == 4 and "falling back to npu-smi" in report.warnings[0]


# --- torch: Apple MPS and ROCm --------------------------------------------------------------------------


def _fake_torch(version: str, *, cuda=None, mps_recommended=None, hip=None):
    cuda = cuda or types.SimpleNamespace(is_available=lambda: False)
    return types.SimpleNamespace(
        __version__=version,
        version=types.SimpleNamespace(hip=hip, cuda=None if hip else "12.4"),
        cuda=cuda,
        backends=types.SimpleNamespace(
            mps=types.SimpleNamespace(is_available=lambda: mps_recommended is not None)
        ),
        mps=types.SimpleNamespace(recommended_max_memory=lambda: mps_recommended),
    )


def test_mps_probe_and_cluster():
    values = load("mps_m2_max.json")
    torch = _fake_torch(values["torch_version"], mps_recommended=values["recommended_max_memory"])
    report = probe_torch(torch, sysctl=values["sysctl"].get, macos_version=values["macos_version"])
    (device,) = report.devices
    assert device.backend == "mps" and device.name == "Apple M2 Max" and device.unified_memory
    assert device.total_memory_bytes == 32 * GiB
    cluster = cluster_from_probe(ProbeResult(host=probe_host(), backend="mps", devices=report.devices))
    assert cluster.accelerator.id == "m2-max"
    assert cluster.accelerator.memory_bytes == 32 * GiB  # this Mac's configuration, not the 96 GB maximum
    assert cluster.memory_bytes_per_device == values["recommended_max_memory"]
    assert any("recommended working set" in note for note in cluster.notes)


def test_mps_on_old_macos_warns_about_bf16():
    values = load("mps_m2_max.json")
    torch = _fake_torch("2.2.2", mps_recommended=values["recommended_max_memory"])
    report = probe_torch(torch, sysctl=values["sysctl"].get, macos_version="13.6")
    assert any("macOS 14+" in warning for warning in report.warnings)


def test_rocm_probe_through_torch_cuda():
    values = load("torch_rocm_mi300x.json")
    props = [types.SimpleNamespace(**{k: v for k, v in d.items() if k != "free"}) for d in values["devices"]]
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: len(props),
        get_device_properties=lambda i: props[i],
        mem_get_info=lambda i: (values["devices"][i]["free"], values["devices"][i]["total_memory"]),
    )
    report = probe_torch(_fake_torch(values["torch_version"], cuda=cuda, hip=values["hip_version"]))
    (device,) = report.devices
    assert report.backend == "rocm" and device.compute_capability is None
    assert device.architecture.startswith("gfx942")
    cluster = cluster_from_probe(ProbeResult(host=probe_host(), backend="rocm", devices=report.devices))
    assert cluster.accelerator.id == "mi300x"


def test_torch_is_not_imported_without_a_device_hint():
    report = probe_torch(system="linux", path_exists=lambda path: False)
    assert report.devices == () and "not tried" in report.note


# --- host -----------------------------------------------------------------------------------------------


def test_parse_meminfo():
    text = "MemTotal:       65536000 kB\nMemFree:         1000000 kB\nMemAvailable:   32768000 kB\nHugePages_Total:       0\n"
    assert parse_meminfo(text) == (65536000 * 1024, 32768000 * 1024)


def test_probe_host_missing_disk_path(tmp_path):
    host = probe_host(tmp_path / "does-not-exist")
    assert host.disk_free_bytes is None and host.usable_cpus <= host.logical_cpus


# --- one contract for every backend ---------------------------------------------------------------------


def _all_reports(monkeypatch):
    reports = []
    for fixture in (
        "nvml_8x_h100_nvswitch.json",
        "nvml_mixed_partial_nvlink.json",
        "nvml_a100_mig.json",
        "nvml_4090_busy.json",
    ):
        FakeNvml(load(fixture)).install(monkeypatch)
        reports.append(probe_nvml({}))
    for fixture in ("npu_smi_910b3.txt", "npu_smi_910b4.txt"):
        text = (FIXTURES / fixture).read_text()
        reports.append(probe_ascend({}, has_torch_npu=lambda: False, npu_smi=lambda text=text: text))
    values = load("mps_m2_max.json")
    torch = _fake_torch("2.5.1", mps_recommended=values["recommended_max_memory"])
    reports.append(probe_torch(torch, sysctl=values["sysctl"].get, macos_version="14.6"))
    return reports


def test_every_backend_keeps_the_report_contract(monkeypatch):
    for report in _all_reports(monkeypatch):
        assert report.note
        assert [d.index for d in report.devices] == list(range(len(report.devices)))
        for device in report.devices:
            assert device.backend == report.backend
            assert device.total_memory_bytes > 0
            if device.free_memory_bytes is not None:
                assert 0 <= device.free_memory_bytes <= device.total_memory_bytes
        cluster = cluster_from_probe(
            ProbeResult(host=probe_host(), backend=report.backend, devices=report.devices)
        )
        assert 0 < cluster.memory_bytes_per_device <= max(d.total_memory_bytes for d in report.devices)


# --- `swiftplan probe` -------------------------------------------------------------------------------------


def _probe_app(monkeypatch, result: ProbeResult):
    import typer

    import swiftplan.executors.probe as probe_package
    from swiftplan.cli import probe as probe_cli

    monkeypatch.setattr(probe_package, "probe", lambda **kwargs: result)
    app = typer.Typer()
    probe_cli.register(app)
    app.command("noop")(lambda: None)
    return app


def test_probe_command_without_accelerator(monkeypatch):
    from typer.testing import CliRunner

    app = _probe_app(monkeypatch, probe(backends=_cpu_only_backends()))
    shown = CliRunner().invoke(app, ["probe"])
    assert shown.exit_code == 0, shown.output
    assert "host" in shown.output and "No accelerator found" in shown.output
    data = json.loads(CliRunner().invoke(app, ["probe", "--json"]).output)
    assert data["has_accelerator"] is False and data["devices"] == [] and data["cluster"] is None
    assert data["host"]["ram_total_bytes"] > 0


def test_probe_command_with_a_busy_gpu(monkeypatch):
    from typer.testing import CliRunner

    app = _probe_app(monkeypatch, nvml_result(monkeypatch, "nvml_4090_busy.json"))
    shown = CliRunner().invoke(app, ["probe"])
    assert shown.exit_code == 0, shown.output
    assert "NVIDIA GeForce RTX 4090" in shown.output and "31337" in shown.output
    assert "--gpus auto plans for:" in shown.output
    data = json.loads(CliRunner().invoke(app, ["probe", "--json"]).output)
    assert data["cluster"]["accelerator_id"] == "rtx4090"
    assert data["cluster"]["memory_bytes_per_device"] == (24564 - 12600) * MiB
    assert data["devices"][0]["processes"] == [{"pid": 31337, "used_memory_bytes": 12288 * MiB}]


def test_probe_console_script_exits_zero_on_this_host():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from swiftplan.cli import main; main()", "probe"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "host" in done.stdout
