"""Energy telemetry: pure integration, nvidia-smi (fake binary), NVML (fake pynvml), RAPL (fake tree)."""

from __future__ import annotations

import csv
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pynvml
import pytest

from sparse_ft.telemetry import energy_smi
from sparse_ft.telemetry.energy import CSV_COLUMNS, EnergyMonitor
from sparse_ft.telemetry.energy_config import energy_options, selected_gpus
from sparse_ft.telemetry.kwh import (
    counter_delta,
    counter_kwh,
    integrate,
    interval_seconds,
    merge_intervals,
    power_kwh,
    read_eq16_kwh,
    util_kwh,
)
from sparse_ft.bench.energy import sampler_overhead_ratio
from sparse_ft.telemetry.energy_smi import QUERY_FIELDS, parse_smi_line
from sparse_ft.telemetry.rapl import RaplReader

FAKE_BIN = Path(__file__).parents[1] / "fake_bin"
SUMMARY_KEYS = {"available", "reason", "backend", "interval_s", "gpus", "p0_kw", "samples", "garbage_lines",
                "kwh_counter", "kwh_power_integral", "kwh_util_estimate", "cpu_kwh", "phases"}
PHASE_KEYS = {"seconds", "kwh_counter", "kwh_power_integral", "kwh_util_estimate", "cpu_kwh"}


# ---------------------------------------------------------------------------------------------
# fixtures / fakes
# ---------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for k in ("FAKE_SMI_MODE", "FAKE_SMI_LINES", "FAKE_SMI_GPUS", "FAKE_SMI_EXIT_AFTER", "FAKE_SMI_LOG"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def no_nvml(monkeypatch):
    def fail():
        raise pynvml.NVMLError_LibraryNotFound()
    monkeypatch.setattr(pynvml, "nvmlInit", fail)


@pytest.fixture
def smi(monkeypatch, tmp_path, no_nvml):
    """Fake nvidia-smi first on PATH; returns a helper to read its invocation log."""
    assert os.access(FAKE_BIN / "nvidia-smi", os.X_OK), "tests/fake_bin/nvidia-smi must be executable"
    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    log = tmp_path / "smi_argv.log"
    monkeypatch.setenv("FAKE_SMI_LOG", str(log))

    def invocations() -> list[list[str]]:
        return [ln.split("\t") for ln in log.read_text().splitlines()] if log.exists() else []
    return invocations


@pytest.fixture
def no_rapl(tmp_path):
    return tmp_path / "no-powercap"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_COLUMNS
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def monitor(tmp_path, rapl_root, **cfg) -> EnergyMonitor:
    base = {"backend": "auto", "interval_s": 0.05, "p0_kw": None, "gpus": None}
    return EnergyMonitor(base | cfg, tmp_path / "run", rapl_root=rapl_root)


class FakeNVML:
    """Deterministic pynvml: GPU i's energy counter grows by ``step[i]`` mJ per read."""

    def __init__(self, n=2, step=(3_600_000, 7_200_000), no_counter=(), power_mw=150_000, limit_mw=300_000,
                 util=40, power_error_every=0):
        self.n, self.step, self.no_counter = n, step, set(no_counter)
        self.power_mw, self.limit_mw, self.util = power_mw, limit_mw, util
        self.power_error_every = power_error_every
        self.reads = defaultdict(int)
        self.power_calls = 0
        self.inits = self.shutdowns = 0

    def install(self, monkeypatch):
        for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                     "nvmlDeviceGetName", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetPowerUsage",
                     "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetEnforcedPowerLimit",
                     "nvmlDeviceGetTotalEnergyConsumption"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < self.n:
            raise pynvml.NVMLError_InvalidArgument()
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        return f"Fake A100 {h[1]}".encode() if h[1] == 0 else f"Fake A100 {h[1]}"  # bytes or str

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.util, memory=10)

    def nvmlDeviceGetPowerUsage(self, h):
        self.power_calls += 1
        if self.power_error_every and self.power_calls % self.power_error_every == 0:
            raise pynvml.NVMLError_Unknown()
        return self.power_mw

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=3 * 2**30, total=40 * 2**30, free=37 * 2**30)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self.limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        i = h[1]
        if i in self.no_counter:
            raise pynvml.NVMLError_NotSupported()
        v = 1_000_000_000 + self.step[i] * self.reads[i]
        self.reads[i] += 1
        return v


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rapl_tree(root: Path, energy_uj: int, max_uj: int) -> Path:
    """A fake powercap tree: package-0 (counted), its core sub-domain and psys (not counted)."""
    for d, name, e in (("intel-rapl:0", "package-0", energy_uj), ("intel-rapl:0:0", "core", 5),
                       ("intel-rapl:1", "psys", 7)):
        (root / d).mkdir(parents=True)
        (root / d / "name").write_text(name + "\n")
        (root / d / "energy_uj").write_text(f"{e}\n")
        (root / d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root / "intel-rapl:0" / "energy_uj"


# ---------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------

TS = [0.0, 10.0, 20.0, 40.0]
PW = [100.0, 200.0, 100.0, 300.0]  # W


def test_integrate_trapezoid_matches_hand_computation():
    # 10·(100+200)/2 + 10·(200+100)/2 + 20·(100+300)/2 = 1500 + 1500 + 4000 = 7000 J
    assert integrate(TS, PW) == pytest.approx(7000.0, rel=1e-12)
    assert power_kwh(TS, PW) == pytest.approx(7000.0 / 3.6e6, rel=1e-6)
    # NaN samples (field unavailable) are dropped: the curve bridges them linearly
    assert integrate([0, 5, 10], [100, float("nan"), 300]) == pytest.approx(2000.0)
    assert integrate([1.0], [5.0]) == 0.0 and integrate([], []) == 0.0


def test_integrate_clips_trapezoids_at_phase_boundaries():
    # [5, 15): P(5)=150, P(10)=200, P(15)=150 → 5·175 + 5·175 = 1750 J
    assert integrate(TS, PW, [(5, 15)]) == pytest.approx(1750.0, rel=1e-12)
    # [30, 50) is clipped to the sampled range [30, 40]: P(30)=200, P(40)=300 → 2500 J
    assert integrate(TS, PW, [(5, 15), (30, 50)]) == pytest.approx(1750.0 + 2500.0, rel=1e-12)
    # boundaries inside one sample interval: [12, 14): P(12)=180, P(14)=160 → 2·170 = 340 J
    assert integrate(TS, PW, [(12, 14)]) == pytest.approx(340.0, rel=1e-12)
    # overlapping repeats count once; a partition of the run sums to the total
    assert integrate(TS, PW, [(5, 15), (10, 15)]) == pytest.approx(1750.0)
    parts = [[(0, 5), (15, 22)], [(5, 15)], [(22, 40)]]
    assert sum(integrate(TS, PW, p) for p in parts) == pytest.approx(7000.0, rel=1e-12)
    assert power_kwh(TS, PW, [(5, 15)]) == pytest.approx(1750.0 / 3.6e6, rel=1e-6)
    assert merge_intervals([(3, 4), (0, 2), (1, 3), (5, 5)]) == [(0.0, 4.0)]
    assert interval_seconds([(0, 2), (1, 3), (10, 11)]) == pytest.approx(4.0)


def test_counter_delta_interpolates_at_boundaries():
    ts, cs = [0.0, 10.0, 20.0], [1000.0, 2000.0, 4000.0]  # mJ
    assert counter_delta(ts, cs) == 3000.0
    # C(15) = 3000, C(5) = 1500
    assert counter_delta(ts, cs, [(5, 15)]) == pytest.approx(1500.0, rel=1e-12)
    assert counter_delta(ts, cs, [(-5, 5), (15, 99)]) == pytest.approx(500.0 + 1000.0, rel=1e-12)
    assert counter_kwh([0, 1], [0, 3.6e9]) == pytest.approx(1.0, rel=1e-12)


def test_util_estimate_and_read_eq16():
    ts = [0.0, 60.0, 120.0, 180.0]  # one sample a minute, as in READ
    u = [40.0, 60.0, 80.0, 100.0]
    # ∫u/100 dt = 60·(0.5 + 0.7 + 0.9) = 126 s → 0.25 kW · 126 s / 3600 = 0.00875 kWh
    assert util_kwh(ts, u, 0.25) == pytest.approx(0.00875, rel=1e-6)
    # eq. 16: U·p0/6000, U = Σ u_i; the trapezoid counts the two end samples half a minute
    assert read_eq16_kwh(u, 0.25) == pytest.approx(280 * 0.25 / 6000, rel=1e-12)
    assert util_kwh(ts, u, 0.25) == pytest.approx(read_eq16_kwh(u, 0.25) - 0.25 * (u[0] + u[-1]) / 12000, rel=1e-9)
    # per phase: [30, 90): u(30)=50, u(60)=60, u(90)=70 → 30·0.55 + 30·0.65 = 36 s
    assert util_kwh(ts, u, 0.25, [(30, 90)]) == pytest.approx(0.25 * 36 / 3600, rel=1e-6)


def test_parse_smi_line():
    r = parse_smi_line("2024/05/01 10:00:00.123, 0, Tesla V100-SXM2-16GB, 45, 123.45, 1024, 300.00\n")
    assert (r.index, r.name, r.util_pct, r.power_w, r.mem_used_mib, r.power_limit_w) == \
        (0, "Tesla V100-SXM2-16GB", 45.0, 123.45, 1024.0, 300.0)
    r = parse_smi_line("2024/05/01 10:00:00.123, 3, NVIDIA GeForce GTX 1080, 7, [N/A], 11, [Not Supported]")
    assert r.index == 3 and r.power_w is None and r.power_limit_w is None and r.util_pct == 7.0
    assert parse_smi_line("ts, 1, Odd, Name, 5, 6, 7, 8").name == "Odd, Name"
    for bad in ("", "garbage !!", "1, 2, 3", "ts, zero, GPU, 1, 2, 3, 4", "ts, 0, GPU, x, 2, 3, 4",
                "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
                "ts, 0, GPU, nan, 2, 3, 4", "ts, -1, GPU, 1, 2, 3, 4"):
        assert parse_smi_line(bad) is None, bad


def test_options_validation_and_gpu_selection(monkeypatch):
    assert energy_options(None) == {"backend": "auto", "interval_s": 1.0, "p0_kw": None, "gpus": None}
    assert energy_options({"backend": False})["backend"] == "off"  # YAML 1.1 `off`
    assert energy_options({"backend": "nvidia-smi", "gpus": "0,2"})["gpus"] == [0, 2]
    for bad, key in (({"backend": "cuda"}, "energy.backend"), ({"interval_s": 0}, "energy.interval_s"),
                     ({"p0_kw": -1}, "energy.p0_kw"), ({"gpus": ["a"]}, "energy.gpus")):
        with pytest.raises(ValueError, match=key):
            EnergyMonitor(bad, "unused")
    assert selected_gpus(None) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 0")
    assert selected_gpus(None) == [2, 0]
    assert selected_gpus([1]) == [1]  # energy.gpus wins
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8a4b1c2d-0000")
    assert selected_gpus(None) is None  # UUIDs cannot be mapped to indices → all
    for none in ("", "-1", "-1,0"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", none)
        assert selected_gpus(None) == []


@pytest.mark.parametrize("name", ["auto", "nvml", "nvidia_smi", "off"])
def test_conf_energy_yaml(name):
    from omegaconf import OmegaConf

    path = Path(__file__).parents[2] / "conf" / "energy" / f"{name}.yaml"
    cfg = OmegaConf.load(path)
    assert set(cfg) == {"backend", "interval_s", "p0_kw", "gpus"}
    assert energy_options(cfg) == {"backend": name, "interval_s": 1.0, "p0_kw": None, "gpus": None}
    lines = path.read_text().splitlines()
    for key in cfg:  # every key has a one-line help comment (generated from the schema, on its line)
        line = next(ln for ln in lines if ln.startswith(f"{key}:"))
        assert " # " in line and line.split(" # ", 1)[1].strip(), key


# ---------------------------------------------------------------------------------------------
# nvidia-smi backend (fake binary)
# ---------------------------------------------------------------------------------------------

def test_nvidia_smi_end_to_end(smi, tmp_path, no_rapl, monkeypatch):
    lines = tmp_path / "canned.csv"
    lines.write_text("2024/05/01 10:00:00.000, 0, Tesla V100-SXM2-16GB, 50, 100.00, 2048, 250.00\n")
    monkeypatch.setenv("FAKE_SMI_LINES", str(lines))
    with monitor(tmp_path, no_rapl, backend="nvidia_smi") as mon:
        with mon.phase("train"):
            time.sleep(0.3)
        for _ in range(2):
            with mon.phase("eval"):
                time.sleep(0.1)
    s = mon.stop()
    assert set(s) == SUMMARY_KEYS and s["available"] is True and s["reason"] is None
    assert s["backend"] == "nvidia_smi" and s["garbage_lines"] == 0 and s["kwh_counter"] is None
    assert s["gpus"] == [{"index": 0, "name": "Tesla V100-SXM2-16GB", "power_limit_w": 250.0}]
    rows = read_csv(tmp_path / "run" / "energy.csv")
    assert len(rows) == s["samples"] >= 4
    assert {r["phase"] for r in rows} <= {"train", "eval", ""} and "train" in {r["phase"] for r in rows}
    assert all(r["energy_counter_mj"] == "" and r["power_w"] == "100" for r in rows)
    t = np.array([float(r["t_s"]) for r in rows])
    assert np.all(np.diff(t) > 0)
    span = t[-1] - t[0]
    assert s["kwh_power_integral"] == pytest.approx(100.0 * span / 3.6e6, rel=1e-4)
    # p0 = the GPU's power limit (250 W), u = 50 %
    assert s["kwh_util_estimate"] == pytest.approx(0.25 * 0.5 * span / 3600, rel=1e-4)
    assert set(s["phases"]) == {"train", "eval"} and set(s["phases"]["eval"]) == PHASE_KEYS
    assert 0.3 <= s["phases"]["train"]["seconds"] < 1.3
    assert 0.2 <= s["phases"]["eval"]["seconds"] < 1.2  # two evals, summed
    parts = sum(p["kwh_power_integral"] for p in s["phases"].values())
    assert 0 < parts <= s["kwh_power_integral"] * (1 + 1e-9)
    # ONE long-lived child with the documented query, not one call per step
    calls = smi()
    assert len(calls) == 1
    assert f"--query-gpu={QUERY_FIELDS}" in calls[0] and "--format=csv,noheader,nounits" in calls[0]
    assert calls[0][calls[0].index("-lms") + 1] == "50"
    assert mon.stop() is s  # idempotent
    assert json.loads(json.dumps(s)) == s  # plain JSON types for summary.json


def test_auto_picks_nvidia_smi_without_nvml(smi, tmp_path, no_rapl, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_GPUS", "2")
    mon = monitor(tmp_path, no_rapl, backend="auto", gpus=[1], p0_kw=0.25)
    mon.start()
    time.sleep(0.15)
    s = mon.stop()
    assert s["backend"] == "nvidia_smi" and s["available"] and s["p0_kw"] == 0.25
    assert [g["index"] for g in s["gpus"]] == [1]
    assert len(smi()) == 2  # one probe, then the sampler
    assert smi()[1][smi()[1].index("-i") + 1] == "1"


def test_missing_binary_gives_reason_not_exception(monkeypatch, tmp_path, no_rapl, no_nvml):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    mon = monitor(tmp_path, no_rapl, backend="nvidia_smi")
    mon.start()
    with mon.phase("train"):
        pass
    s = mon.stop()
    assert s["available"] is False and "nvidia-smi not on PATH" in s["reason"] and s["samples"] == 0
    assert read_csv(tmp_path / "run" / "energy.csv") == []  # header only
    mon = monitor(tmp_path, no_rapl, backend="auto")
    mon.start()
    s = mon.stop()
    assert s["available"] is False and s["backend"] is None
    assert s["reason"].startswith("no GPU (NVML: NVMLError_LibraryNotFound")
    assert "nvidia-smi not on PATH" in s["reason"] and "RAPL not readable" in s["reason"]


def test_binary_exits_mid_run_keeps_samples(smi, tmp_path, no_rapl, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_MODE", "exit_early")
    monkeypatch.setenv("FAKE_SMI_EXIT_AFTER", "3")
    mon = monitor(tmp_path, no_rapl, backend="nvidia_smi")
    mon.start()
    with mon.phase("train"):
        time.sleep(0.6)
    s = mon.stop()
    assert s["available"] is True and s["samples"] == 3
    assert "exited early (rc=3)" in s["reason"] and "GPU is lost" in s["reason"]
    assert s["kwh_power_integral"] > 0
    assert len(read_csv(tmp_path / "run" / "energy.csv")) == 3


def test_driver_failure_forced_and_auto_falls_back_to_rapl(smi, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_MODE", "fail")
    s = monitor(tmp_path, tmp_path / "none", backend="nvidia_smi")
    s.start()
    s = s.stop()
    assert s["available"] is False and "exited early (rc=9)" in s["reason"] and s["garbage_lines"] == 1
    rapl_tree(tmp_path / "powercap", 1000, 10**9)
    mon = monitor(tmp_path, tmp_path / "powercap", backend="auto")
    mon.start()
    s = mon.stop()
    assert s["backend"] == "rapl" and s["available"] is True and s["cpu_kwh"] == 0.0


def test_garbage_mid_run_is_skipped_and_counted(smi, tmp_path, no_rapl, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_MODE", "garbage")
    mon = monitor(tmp_path, no_rapl, backend="nvidia_smi")
    mon.start()
    time.sleep(0.35)
    s = mon.stop()
    assert s["available"] is True and s["reason"] is None
    assert s["garbage_lines"] > 0 and s["garbage_lines"] % 4 == 0  # the fake prints 4 per tick
    rows = read_csv(tmp_path / "run" / "energy.csv")
    assert len(rows) == s["samples"] and all(r["name"] == "Fake GPU 0" for r in rows)


def test_hanging_binary_does_not_block(smi, tmp_path, no_rapl, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_MODE", "hang")
    monkeypatch.setattr(energy_smi, "FIRST_SAMPLE_WAIT_S", 0.2)
    mon = monitor(tmp_path, no_rapl, backend="nvidia_smi")
    t = time.monotonic()
    mon.start()
    s = mon.stop()
    assert time.monotonic() - t < 5
    assert s["available"] is False and "no samples" in s["reason"]


def test_off(tmp_path):
    mon = EnergyMonitor({"backend": "off"}, tmp_path / "run")
    mon.start()
    with mon.phase("train"):
        pass
    s = mon.stop()
    assert s["available"] is False and s["reason"] == "energy.backend=off" and s["backend"] is None
    assert set(s) == SUMMARY_KEYS and s["phases"]["train"]["kwh_power_integral"] is None
    assert not (tmp_path / "run" / "energy.csv").exists()


def test_stop_without_start_and_phase_after_stop(tmp_path, no_rapl):
    mon = monitor(tmp_path, no_rapl, backend="nvml")
    s = mon.stop()
    assert s["available"] is False and "never started" in s["reason"]
    with mon.phase("late"):  # must not raise
        pass
    assert mon.stop() is s


# ---------------------------------------------------------------------------------------------
# NVML backend (fake pynvml)
# ---------------------------------------------------------------------------------------------

def _per_gpu(rows, gpu):
    return [r for r in rows if r["gpu"] == str(gpu)]


def test_nvml_counter_power_util(monkeypatch, tmp_path, no_rapl):
    fake = FakeNVML().install(monkeypatch)
    mon = monitor(tmp_path, no_rapl, backend="auto")
    mon.start()
    with mon.phase("train"):
        time.sleep(0.2)
    with mon.phase("eval"):
        time.sleep(0.1)
    s = mon.stop()
    assert s["backend"] == "nvml" and s["available"] and s["reason"] is None
    assert fake.inits == 1 and fake.shutdowns == 1
    assert s["gpus"] == [{"index": 0, "name": "Fake A100 0", "power_limit_w": 300.0},
                         {"index": 1, "name": "Fake A100 1", "power_limit_w": 300.0}]
    rows = read_csv(tmp_path / "run" / "energy.csv")
    n0, n1 = len(_per_gpu(rows, 0)), len(_per_gpu(rows, 1))
    assert n0 == fake.reads[0] and n1 == fake.reads[1] and n0 >= 3 and s["samples"] == n0 + n1
    # GPU 0 gains 3.6e6 mJ = 0.001 kWh per sample, GPU 1 twice that
    assert s["kwh_counter"] == pytest.approx((n0 - 1) * 0.001 + (n1 - 1) * 0.002, rel=1e-9)
    assert [int(r["energy_counter_mj"]) for r in _per_gpu(rows, 0)] == \
        [1_000_000_000 + 3_600_000 * k for k in range(n0)]
    assert all(r["power_w"] == "150" and r["util_pct"] == "40" and r["mem_used_mib"] == "3072" for r in rows)
    expect_power = expect_util = 0.0
    for g in (0, 1):
        t = [float(r["t_s"]) for r in _per_gpu(rows, g)]
        expect_power += 150.0 * (t[-1] - t[0]) / 3.6e6
        expect_util += 0.3 * 0.4 * (t[-1] - t[0]) / 3600  # p0 = the 300 W limit
    assert s["kwh_power_integral"] == pytest.approx(expect_power, rel=1e-4)
    assert s["kwh_util_estimate"] == pytest.approx(expect_util, rel=1e-4)
    ph = s["phases"]
    assert ph["train"]["kwh_counter"] > 0 and ph["eval"]["kwh_counter"] > 0
    assert ph["train"]["kwh_counter"] + ph["eval"]["kwh_counter"] <= s["kwh_counter"] * (1 + 1e-9)
    assert 0.2 <= ph["train"]["seconds"] < 1.2


def test_nvml_gpu_without_counter_and_transient_errors(monkeypatch, tmp_path, no_rapl):
    FakeNVML(n=1, no_counter={0}, power_error_every=3).install(monkeypatch)
    mon = monitor(tmp_path, no_rapl, backend="nvml")
    mon.start()
    time.sleep(0.3)
    s = mon.stop()
    assert s["available"] is True and s["kwh_counter"] is None
    assert s["kwh_power_integral"] > 0 and s["kwh_util_estimate"] > 0
    assert "NVML:" in s["reason"] and "NVMLError_Unknown" in s["reason"]
    rows = read_csv(tmp_path / "run" / "energy.csv")
    assert all(r["energy_counter_mj"] == "" for r in rows)
    assert any(r["power_w"] == "" for r in rows)  # the failed reads are empty fields


def test_nvml_honours_cuda_visible_devices(monkeypatch, tmp_path, no_rapl):
    FakeNVML(n=2).install(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with monitor(tmp_path, no_rapl, backend="nvml") as mon:
        time.sleep(0.1)
    s = mon.stop()
    assert [g["index"] for g in s["gpus"]] == [1]
    assert {r["gpu"] for r in read_csv(tmp_path / "run" / "energy.csv")} == {"1"}


def test_nvml_init_error_forced(tmp_path, no_rapl, no_nvml):
    mon = monitor(tmp_path, no_rapl, backend="nvml")
    mon.start()
    s = mon.stop()
    assert s["available"] is False and s["reason"].startswith("energy.backend=nvml: NVML: NVMLError_LibraryNotFound")


# ---------------------------------------------------------------------------------------------
# RAPL (fake powercap tree)
# ---------------------------------------------------------------------------------------------

def test_rapl_reader_wraparound(tmp_path):
    f = rapl_tree(tmp_path, 900_000, 1_000_000)
    r = RaplReader(tmp_path)
    assert r.open() and r.domains == ["package-0"]  # core and psys are not summed
    write_atomic(f, "950000\n")
    assert r.read_uj() == 50_000
    write_atomic(f, "100000\n")  # wrapped: 50_000 to the top + 100_000
    assert r.read_uj() == 200_000
    bad = RaplReader(tmp_path / "missing")
    assert not bad.open() and "no RAPL domains" in bad.error


def test_rapl_backend_phases_and_wrap(monkeypatch, tmp_path, no_nvml):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    max_uj = 10 * 10**9
    f = rapl_tree(tmp_path / "powercap", 9 * 10**9, max_uj)
    mon = monitor(tmp_path, tmp_path / "powercap", backend="auto")
    mon.start()
    write_atomic(f, f"{9_500_000_000}\n")                    # +0.5e9 µJ before the phase
    with mon.phase("train"):
        time.sleep(0.08)
        write_atomic(f, f"{9_500_000_000 + 3_600_000_000 - max_uj}\n")  # +3.6e9 µJ, wrapping
        time.sleep(0.08)
    write_atomic(f, f"{3_100_000_000 + 1_000_000_000}\n")   # +1e9 µJ after it
    s = mon.stop()
    assert s["backend"] == "rapl" and s["available"] and s["reason"] is None
    assert s["cpu_kwh"] == pytest.approx(5.1e9 / 3.6e12, rel=1e-9)
    assert s["phases"]["train"]["cpu_kwh"] == pytest.approx(0.001, rel=1e-9)
    assert s["kwh_power_integral"] is None and s["gpus"] == []
    rows = read_csv(tmp_path / "run" / "energy.csv")
    assert rows and all(r["gpu"] == "cpu" and r["name"] == "rapl:package-0" for r in rows)
    assert float(rows[-1]["energy_counter_mj"]) == pytest.approx(5.1e6)


def test_rapl_not_readable_reason(tmp_path, monkeypatch, no_nvml):
    monkeypatch.setenv("PATH", str(tmp_path))
    rapl_tree(tmp_path / "powercap", 1, 10)
    (tmp_path / "powercap" / "intel-rapl:0" / "energy_uj").unlink()
    mon = monitor(tmp_path, tmp_path / "powercap")
    mon.start()
    s = mon.stop()
    assert s["available"] is False and "RAPL not readable:" in s["reason"] and "energy_uj" in s["reason"]


# ---------------------------------------------------------------------------------------------
# benchmark helper
# ---------------------------------------------------------------------------------------------

def test_sampler_overhead_ratio_returns_keys(no_nvml):
    out = sampler_overhead_ratio(lambda: sum(range(2000)), steps=4, interval_s=0.05, fake_smi_dir=FAKE_BIN)
    assert set(out) == {"energy_sampler_overhead_ratio", "energy_sampler_backend"}
    assert out["energy_sampler_backend"] == "nvidia_smi" and out["energy_sampler_overhead_ratio"] > 0
