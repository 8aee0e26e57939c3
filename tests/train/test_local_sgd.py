"""FISH §4.2 on torch.distributed: local SGD with sparse communication (distributed=local_sgd).

Two gloo workers via torchrun on task=digits / tiny_resnet: disjoint shards, one mask for all
ranks, frozen entries bit-identical everywhere, exact byte counts; M = 1 equals a plain run; a
dead worker fails the job fast; the sweeps compose.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, compose, run_cli, run_dirs

TINY = ["experiment=fish_distributed", "task=digits", "model=tiny_resnet", "task.max_train_samples=256", "task.max_eval_samples=64",
        "trainer.epochs=3", "distributed.warmup_epochs=1", "distributed.local_steps=3", "distributed.total_batch_size=32",
        "distributed.mask_samples=64", "trainer.lr=0.05", "energy=off", "trainer.progress=false", "trainer.log_every=1"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "helpers")}  # the probes: tests/helpers/dist_probes.py


def _torchrun(out: Path, nproc: int, args: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(REPO / "run.py"), f"output_root={out}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **ENV, **(env or {})})


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def evals(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]


@pytest.mark.slow
def test_two_workers_share_the_mask_keep_frozen_entries_and_count_bytes_exactly(tmp_path):
    dump = tmp_path / "dump"
    probe = f"trainer.callbacks=[{{_target_:dist_probes.DumpState,out:'{dump}'}}]"
    proc = _torchrun(tmp_path / "out", 2, [*TINY, "method.density=0.1", probe])
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = run_dirs(tmp_path / "out")
    s = summary(run)
    assert s["status"] == "completed"
    from omegaconf import OmegaConf

    assert OmegaConf.load(run / "config.yaml").trainer.batch_size == 16  # the effective config: total 32 over 2 workers
    comm = s["communication"]
    # 256 train images, 2 workers x 16 = 8 steps per epoch; 16 steps after warm-up: a round every
    # 3 steps (5) + the final partial one; evaluations in between see the last sync's weights
    assert comm["workers"] == 2 and comm["warmup_steps"] == 8 and comm["rounds"] == 6
    k, total = comm["values_per_message"], comm["model_params"]
    assert k == s["method_report"]["k"] and abs(k / total - 0.1) < 1e-3
    assert comm["bytes"] == comm["rounds"] * 4 * k and comm["bytes_per_round"] == 4 * k
    assert comm["bytes_with_positions"] == comm["rounds"] * 8 * k
    assert comm["sync_full_model_equivalents"] == pytest.approx(comm["rounds"] * 2 * k / total)
    # the data-parallel warm-up all-reduces every gradient (the mask is chosen after it): 8 dense steps
    assert comm["warmup_full_model_equivalents"] == pytest.approx(8.0)
    assert comm["full_model_equivalents"] == pytest.approx(8.0 + comm["rounds"] * 2 * k / total)
    assert comm["mask_broadcasts"] == 1 and comm["mask_broadcast_bytes"] == 4 * k
    curve = evals(run)
    assert [e["comm_rounds"] for e in curve] == [0, 2, 6] and curve[-1]["comm_bytes"] == comm["bytes"]
    assert curve[0]["comm_full_model_equivalents"] == pytest.approx(8.0)  # the plot's axis starts after the warm-up's traffic
    assert (run / "accuracy_vs_communication.png").is_file()

    ranks = {tag: [torch.load(dump / f"{tag}_rank{r}.pt") for r in (0, 1)] for tag in ("warmup_end", "end")}
    a, b = ranks["end"]
    assert not set(a["shard"]) & set(b["shard"]) and len(a["shard"]) == len(b["shard"]) == 128  # disjoint shards
    assert a["mask"]["mask"].keys() == b["mask"]["mask"].keys()
    assert all(torch.equal(a["mask"]["mask"][n], b["mask"]["mask"][n]) for n in a["mask"]["mask"])  # one mask
    assert sum(i.numel() for i in a["mask"]["mask"].values()) == k
    for key in a["state"]:  # after the final sync every rank holds the same weights, bit for bit
        assert torch.equal(a["state"][key], b["state"][key]), key
    warm = ranks["warmup_end"][0]["state"]
    mask = a["mask"]["mask"]
    moved = 0
    for name, before in warm.items():  # entries outside the mask never moved after the warm-up
        if "running_" in name or "num_batches_tracked" in name:  # BatchNorm statistics: buffers, synced by averaging
            continue
        after = a["state"][name].reshape(-1)
        frozen = torch.ones(after.numel(), dtype=torch.bool)
        if name in mask:
            frozen[mask[name].long()] = False
        assert torch.equal(after[frozen], before.reshape(-1)[frozen]), name
        moved += int((after[~frozen] != before.reshape(-1)[~frozen]).sum())
    assert moved > 0.5 * k  # the masked entries did train


@pytest.mark.slow
def test_one_worker_reproduces_single_process_training(tmp_path):
    args = [*TINY, "trainer.epochs=2", "method=random_mask"]
    one = _torchrun(tmp_path / "one", 1, args)
    assert one.returncode == 0, one.stderr[-3000:]
    plain = run_cli([*args, "distributed.allow_single_worker=true"], tmp_path / "plain", env=ENV)
    assert plain.returncode == 0, plain.stderr[-3000:]
    (a,), (b,) = run_dirs(tmp_path / "one"), run_dirs(tmp_path / "plain")
    wa, wb = load_file(str(a / "checkpoints/final/model.safetensors")), load_file(str(b / "checkpoints/final/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert summary(a)["metrics"] == summary(b)["metrics"]
    assert summary(a)["communication"]["bytes"] == 0  # one worker: nothing to send


@pytest.mark.slow
def test_a_dead_worker_fails_the_job_fast(tmp_path):
    started = time.monotonic()
    # rank 1 dies after 10 steps (2 after the 8 warm-up steps): rank 0 meets the hole at its next sync
    probe = "trainer.callbacks=[{_target_:dist_probes.ExitAt,rank:1,step:10}]"
    proc = _torchrun(tmp_path / "out", 2, [*TINY, "method=dense", "trainer.dist_timeout_s=60", probe], timeout=200)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "rank 1 exits now" in out and ("peer worker is gone" in out or "ChildFailedError" in out)
    assert elapsed < 100


# --- presets and sweeps --------------------------------------------------------------------------

SWEEPS = {"fish_distributed_fig3": "fish_distributed", "fish_checkpointing_table2": "fish_checkpointing"}


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_sweep_dry_run_and_every_value_composes(sweep):
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), f"+sweep={sweep}", "--cfg", "job"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"name: {sweep}" in proc.stdout and "resnet34" in proc.stdout and "cifar10" in proc.stdout
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from sparse_ft.config.validation import validate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        hcfg = hydra_compose(config_name="config", overrides=[f"+sweep={sweep}"], return_hydra_config=True)
        params = {k: str(v).split(",") for k, v in hcfg.hydra.sweeper.params.items()}
        methods = params.pop("method")
        widest = max(len(v) for v in params.values())
        for method, i in itertools.product(methods, range(widest)):
            overrides = [f"+sweep={sweep}", f"method={method}"] + [f"{k}={v[i % len(v)]}" for k, v in params.items()]
            if sweep == "fish_distributed_fig3":  # validated outside torchrun here
                overrides.append("distributed.allow_single_worker=true")
            cfg = hydra_compose(config_name="config", overrides=overrides)
            validate(cfg)
            OmegaConf.to_container(cfg, resolve=True)
            assert cfg.model.name == "resnet34" and cfg.trainer.optimizer == "sgd" and cfg.trainer.nesterov


def test_distributed_preset_follows_the_paper():
    cfg = compose(["experiment=fish_distributed"])
    assert cfg.distributed.mode == "local_sgd" and cfg.distributed.warmup_epochs == 5 and cfg.distributed.reduce == "sum"
    assert cfg.method.name == "fish" and cfg.method.density == 0.1 and cfg.method.num_samples == 256
    assert cfg.trainer.lr == 0.08 and cfg.trainer.epochs == 105 and cfg.model.cifar_stem
    assert compose([]).distributed.mode == "none"


def test_bad_distributed_values_are_config_errors():
    from sparse_ft.config.validation import ConfigError, validate

    for override, key in (("distributed.local_steps=0", "distributed.local_steps"), ("distributed.reduce=max", "distributed.reduce")):
        with pytest.raises(ConfigError, match=key):
            validate(compose(["experiment=fish_distributed", override]))
