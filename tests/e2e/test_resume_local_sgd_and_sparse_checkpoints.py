"""Loose ends of issue 13: resume for local-SGD and sparse-checkpoint runs, and a dead worker's
error in rank 0's summary.json.

- a pre-empted `distributed=local_sgd` run (2 gloo workers under torchrun, tiny_bert) resumes at
  its last sync round and ends bit-identical to an uninterrupted run;
- a pre-empted `trainer.sparse_checkpoints=true` run resumes, keeps writing deltas, and its replayed
  checkpoints equal the dense copies (and the uninterrupted run's) bit for bit;
- a worker that raises under torchrun: rank 0 writes summary.json with status failed and that error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_dirs

HELPERS = Path(__file__).parents[1] / "helpers"
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HELPERS)}  # the probes: tests/helpers/dist_probes.py
TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=256", "task.max_eval_samples=32",
        "energy=off", "trainer.progress=false", "trainer.log_every=1"]


def _torchrun(out: Path, args: list[str], nproc: int = 2, timeout: int = 200) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(REPO / "run.py"), f"output_root={out}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **ENV})


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def records(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.mark.slow
def test_a_failing_worker_error_reaches_rank0_summary(tmp_path):
    run = tmp_path / "run"
    probe = "trainer.callbacks=[{_target_:dist_probes.RaiseAt,rank:1,step:3}]"
    started = time.monotonic()
    proc = _torchrun(tmp_path, [*TINY, "method=dense", "trainer.batch_size=8", "trainer.max_steps=20", "trainer.dist_timeout_s=30",
                                f"hydra.run.dir={run}", probe])
    assert proc.returncode != 0
    assert (run / "summary.json").is_file(), proc.stderr[-4000:]
    s = summary(run)
    assert s["status"] == "failed"
    assert "probe: rank 1 fails at optimizer step 3" in s["error"] and "rank 1" in s["error"], s["error"]
    assert time.monotonic() - started < 90
    assert [r["rank"] for r in s["worker_errors"]] == [1] and not s["worker_errors"][0]["peer_failure"]


def weights(run: Path) -> dict:
    return load_file(str(run / "checkpoints/final/model.safetensors"))


def train_steps(run: Path) -> list[int]:
    return [r["step"] for r in records(run) if r["type"] == "train"]


LOCAL_SGD = [*TINY, "experiment=fish_distributed", "model=tiny_bert", "task=synthetic_nli", "method.density=0.1",
             "trainer.epochs=3", "trainer.lr=0.05", "distributed.warmup_epochs=1", "distributed.local_steps=3",
             "distributed.total_batch_size=32", "distributed.mask_samples=32", "trainer.checkpoint_every=0"]


@pytest.mark.slow
def test_preempted_local_sgd_run_resumes_at_its_last_sync_round(tmp_path):
    # 256 examples, 2 workers x 16: 8 steps an epoch; DDP warm-up = steps 1-8, then rounds after
    # steps 11, 14, ... SIGTERM during step 12, so the workers stop after step 13 (they agree at the
    # next step boundary): the checkpoint holds the round of step 11 (each worker's momentum, RNG
    # and shard position included) and the resumed run redoes steps 12-13
    full, cut = tmp_path / "full", tmp_path / "cut"
    probe = f"trainer.callbacks=[{{_target_:dist_probes.SignalAt,step:12,once:'{tmp_path / 'fired'}'}}]"
    first = _torchrun(tmp_path, [*LOCAL_SGD, f"hydra.run.dir={cut}", probe])
    assert first.returncode != 0
    s = summary(cut)
    assert s["status"] == "interrupted" and "SIGTERM" in s["error"], first.stderr[-3000:]
    manifest = json.loads((cut / "checkpoints/last/manifest.json").read_text())
    assert manifest["step"] == 11
    saved = torch.load(cut / "checkpoints/last/trainer_state.pt", weights_only=True)
    assert len(saved["workers"]) == 2 and saved["callbacks"]["LocalSGDCallback"]["rounds"] == 1

    again = _torchrun(tmp_path, [*LOCAL_SGD, f"hydra.run.dir={cut}", probe])  # the probe fired once: it stays quiet
    assert again.returncode == 0, again.stderr[-3000:]
    ref = _torchrun(tmp_path, [*LOCAL_SGD, f"hydra.run.dir={full}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    a, b = summary(full), summary(cut)
    assert b["status"] == "completed" and b["resumed_from"]["step"] == 11
    assert a["metrics"] == b["metrics"]
    assert a["communication"] == b["communication"] and b["communication"]["rounds"] == 6
    wa, wb = weights(full), weights(cut)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert train_steps(cut) == train_steps(full) == list(range(1, 25))  # no step logged twice
    assert [r for r in records(cut) if r["type"] == "eval"] == [r for r in records(full) if r["type"] == "eval"]


SPARSE = ["experiment=fish_checkpointing", "task=digits", "model=tiny_resnet", "task.max_train_samples=256", "task.max_eval_samples=64",
          "trainer.epochs=3", "trainer.batch_size=32", "method.num_samples=64", "trainer.lr=0.05", "method.density=0.1",
          "method.mask_refresh_epochs=1", "trainer.sparse_checkpoints_dense=true", "trainer.checkpoint_every=0"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8) if t.is_floating_point() else t


@pytest.mark.slow
def test_preempted_sparse_checkpoint_run_resumes_and_replays_bit_for_bit(tmp_path, monkeypatch):
    from conftest import run_inprocess
    from sparse_ft.artifacts.sparse_checkpoints import SUBDIR, replay

    monkeypatch.syspath_prepend(str(HELPERS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full, cut = tmp_path / "full", tmp_path / "cut"
        a = run_inprocess(full, SPARSE)
        # 8 steps an epoch, a sparse checkpoint (and a mask refresh) at each epoch end: SIGTERM during
        # step 12 stops the run after step 13, between sparse checkpoints 1 and 2
        probe = f"trainer.callbacks=[{{_target_:dist_probes.SignalAt,step:12,once:'{tmp_path / 'fired'}'}}]"
        with pytest.raises(SystemExit) as stopped:
            run_inprocess(cut, [*SPARSE, probe])
        assert stopped.value.code == 128 + 15
        assert summary(cut)["status"] == "interrupted"
        assert json.loads((cut / "checkpoints/last/manifest.json").read_text())["step"] == 13
        assert sorted(p.name for p in (cut / SUBDIR).glob("delta_*")) == ["delta_0001.safetensors"]
        base = (cut / SUBDIR / "base.safetensors").read_bytes()
        b = run_inprocess(cut, SPARSE)
    finally:
        torch.set_num_threads(threads)
    assert b["status"] == "completed" and b["resumed_from"]["step"] == 13
    assert (cut / SUBDIR / "base.safetensors").read_bytes() == base  # the base stays the run's initial weights
    d_full, d_cut = full / SUBDIR, cut / SUBDIR
    assert sorted(p.name for p in d_cut.glob("delta_*")) == ["delta_0001.safetensors", "delta_0002.safetensors", "delta_0003.safetensors"]
    for n in (1, 2, 3):  # the replayed checkpoints equal the dense copies, and the uninterrupted run's, bit for bit
        dense, got = load_file(str(d_cut / f"dense_{n:04d}.safetensors")), replay(cut, n)
        want = load_file(str(d_full / f"dense_{n:04d}.safetensors"))
        assert dense.keys() == got.keys() == want.keys()
        for k in dense:
            assert torch.equal(_bits(dense[k]), _bits(got[k])) and torch.equal(_bits(want[k]), _bits(got[k])), (n, k)
        assert load_file(str(d_cut / f"delta_{n:04d}.safetensors")).keys() == load_file(str(d_full / f"delta_{n:04d}.safetensors")).keys()
    final = weights(cut)
    assert all(torch.equal(final[k], v) for k, v in replay(cut).items() if k in final)
    assert all(torch.equal(final[k], weights(full)[k]) for k in final)
    sa, sb = a["storage"]["sparse_checkpoints"], b["storage"]["sparse_checkpoints"]
    assert sb["checkpoints"] == 3 and sb == sa  # the same files, sizes and changed entries as without the stop
