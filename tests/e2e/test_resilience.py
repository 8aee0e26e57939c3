"""Runs that survive and scale: resume, pre-emption, failure isolation, DDP, submitit sweeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_cli, run_dirs

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=256", "task.max_eval_samples=32",
        "trainer.batch_size=8", "energy=off", "trainer.progress=false", "trainer.log_every=1"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def weights(run: Path) -> dict:
    return load_file(str(run / "checkpoints/final/model.safetensors"))


def train_steps(run: Path) -> list[int]:
    return [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in l]


@pytest.mark.slow
def test_sigterm_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    # dropout stays on: the resumed run must restore the RNG too, not just weights and optimizer
    args = [*TINY, "trainer.max_steps=300", "trainer.eval_every=100", "trainer.checkpoint_every=5", "trainer.lr=1e-3"]
    full = run_cli([*args, f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    cut = tmp_path / "cut"
    cmd = [sys.executable, str(REPO / "run.py"), f"output_root={tmp_path}", f"hydra.run.dir={cut}", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    manifest = cut / "checkpoints/last/manifest.json"
    deadline = time.time() + 240
    while not manifest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint: make it longer"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    s = summary(cut)
    assert s["status"] == "interrupted" and "SIGTERM" in s["error"]
    stopped_at = json.loads(manifest.read_text())["step"]
    assert 5 <= stopped_at < 300 and not (cut / "checkpoints/final").exists()

    resumed = run_cli([*args, f"hydra.run.dir={cut}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    s = summary(cut)
    assert s["status"] == "completed" and s["resumed_from"]["step"] == stopped_at
    assert s["metrics"] == summary(tmp_path / "full")["metrics"]
    a, b = weights(tmp_path / "full"), weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train_steps(cut) == train_steps(tmp_path / "full") == list(range(1, 301))  # no duplicated steps


@pytest.mark.slow
def test_completed_run_is_not_trained_again_and_resume_never_starts_over(tmp_path):
    run = tmp_path / "r"
    args = [*TINY, "trainer.max_steps=3", "trainer.checkpoint_every=1", f"hydra.run.dir={run}"]
    assert run_cli(args, tmp_path).returncode == 0
    first = (run / "summary.json").stat().st_mtime_ns
    again = run_cli(args, tmp_path)
    assert again.returncode == 0 and "already holds a completed run" in again.stdout + again.stderr
    assert (run / "summary.json").stat().st_mtime_ns == first
    fresh = run_cli([*args, "trainer.resume=never"], tmp_path)
    assert fresh.returncode == 0
    assert "resumed_from" not in summary(run)


@pytest.mark.slow
def test_corrupted_checkpoint_is_reported_not_loaded(tmp_path):
    src = tmp_path / "src"
    assert run_cli([*TINY, "trainer.max_steps=3", "trainer.checkpoint_every=1", f"hydra.run.dir={src}"], tmp_path).returncode == 0
    model = src / "checkpoints/last/model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    proc = run_cli([*TINY, "trainer.max_steps=3", f"trainer.resume={src}", f"hydra.run.dir={tmp_path / 'dst'}"], tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "model.safetensors" in out and "checksum mismatch" in out
    assert summary(tmp_path / "dst")["status"] == "failed"
    bad_path = run_cli([*TINY, f"trainer.resume={tmp_path / 'nowhere'}"], tmp_path)
    assert bad_path.returncode != 0 and "trainer.resume" in bad_path.stdout + bad_path.stderr


@pytest.mark.slow
def test_diverging_loss_fails_naming_the_step(tmp_path):
    run = tmp_path / "r"
    proc = run_cli([*TINY, "trainer.max_steps=5", "trainer.lr=1e9", "trainer.max_grad_norm=0", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode != 0
    s = summary(run)
    assert s["status"] == "failed" and "optimizer step" in s["error"] and "TrainingDiverged" in s["error"]
    assert "TrainingDiverged" in (run / "run.log").read_text()


@pytest.mark.slow
def test_multirun_with_one_failing_job(tmp_path):
    proc = run_cli(["-m", *TINY, "trainer.max_steps=2", "trainer.max_grad_norm=0", "trainer.lr=1e-4,1e9,5e-5"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep says a job failed
    statuses = sorted(summary(r)["status"] for r in run_dirs(tmp_path))
    assert statuses == ["completed", "completed", "failed"]
    failed = next(r for r in run_dirs(tmp_path) if summary(r)["status"] == "failed")
    assert "TrainingDiverged" in summary(failed)["error"]


def _torchrun(tmp_path, nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(REPO / "run.py"), f"output_root={tmp_path}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_torchrun_two_cpu_processes_one_run_directory(tmp_path):
    proc = _torchrun(tmp_path / "ddp", 2, [*TINY, "trainer.max_steps=6"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "ddp")
    s = summary(run)
    assert s["status"] == "completed" and s["time"]["steps"] == 6
    assert s["time"]["train_samples"] == 6 * 8 * 2  # global batch = 2 ranks x 8


@pytest.mark.slow
def test_torchrun_with_one_process_matches_a_plain_run(tmp_path):
    args = [*TINY, "trainer.max_steps=4"]
    assert _torchrun(tmp_path / "one", 1, args).returncode == 0
    plain = run_cli(args, tmp_path / "plain", env={"OMP_NUM_THREADS": "1"})  # same threads: same float sums
    assert plain.returncode == 0
    (a,), (b,) = run_dirs(tmp_path / "one"), run_dirs(tmp_path / "plain")
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert summary(a)["metrics"] == summary(b)["metrics"]


def test_shards_are_disjoint_and_cover_the_epoch():
    from sparse_ft.train.distributed import DistInfo, shard
    from sparse_ft.train.trainer import epoch_order

    order = epoch_order(103, seed=1, epoch=0)
    parts = [shard(order, DistInfo(r, 3, r)) for r in range(3)]
    assert len({len(p) for p in parts}) == 1  # same number of steps on every rank
    assert set().union(*parts) == set(range(103))
    unpadded = [shard(order, DistInfo(r, 3, r), pad=False) for r in range(3)]
    assert sum(map(len, unpadded)) == 103 and not set(unpadded[0]) & set(unpadded[1])


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    proc = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *TINY, "trainer.max_steps=2", "seed=1,2"], tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert sorted(summary(r)["seed"] for r in runs) == [1, 2]
    assert all(summary(r)["status"] == "completed" for r in runs)


def test_slurm_launcher_preset_composes_with_documented_keys(tmp_path):
    proc = run_cli(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg=hydra"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("partition: gpu", "timeout_min: 240", "gpus_per_node: 1", "array_parallelism: 64", "signal_delay_s: 120", "requeue: true", "SlurmLauncher"):
        assert line in proc.stdout, line


def test_preemption_passes_the_signal_on_to_a_launchers_handler():
    """submitit requeues from its SIGUSR2 handler: ours checkpoints first, then calls it."""
    from sparse_ft.train.preemption import PreemptionWatcher

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with PreemptionWatcher(["SIGUSR2"]) as watcher:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert watcher.received == signal.SIGUSR2 and seen == []  # ours ran, theirs not yet
            watcher.chain()
            assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
