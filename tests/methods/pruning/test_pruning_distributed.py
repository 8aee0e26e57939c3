"""Pruned entries stay exactly zero under torchrun: DDP (gradients all-reduced every step) and
`distributed=local_sgd` (workers train apart and sum their changes every few steps).

Two gloo workers on CPU, `method=omp model=tiny_bert task=synthetic_nli`, a few steps. Each rank
dumps its weights and masks at the start and the end of training (tests/helpers/pruning_probes.py);
the final checkpoint rank 0 writes is checked against the mask it saved (`prune_mask.safetensors`):
every pruned entry is +0.0 (not −0.0), on both ranks, the ranks hold one mask and the same weights,
and the kept entries did train.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import QUICK, REPO, run_dirs

from sparse_ft.methods.pruning.masks import MASK_FILE, load_masks

TINY = ["method=omp", "model=tiny_bert", "task=synthetic_nli", "method.sparsity=0.5", "task.max_train_samples=128",
        "task.max_eval_samples=32", "trainer.max_steps=4", "trainer.lr=1e-2", "trainer.weight_decay=0.1", *QUICK]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "helpers")}


def _torchrun(out: Path, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "run.py"),
           f"output_root={out}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, **ENV})


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "local_sgd"])
def test_pruned_entries_stay_exactly_zero_on_every_rank(tmp_path, mode):
    dump = tmp_path / "dump"
    extra = [] if mode == "ddp" else ["distributed=local_sgd", "distributed.warmup_epochs=0", "distributed.local_steps=2",
                                      "distributed.total_batch_size=32"]
    probe = f"trainer.callbacks=[{{_target_:pruning_probes.DumpPruned,out:'{dump}'}}]"
    proc = _torchrun(tmp_path / "out", [*TINY, *extra, probe])
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = run_dirs(tmp_path / "out")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    if mode == "local_sgd":
        assert summary["communication"]["workers"] == 2 and summary["communication"]["rounds"] >= 2
    keep = load_masks(run / MASK_FILE)
    final = load_file(str(run / "checkpoints" / "final" / "model.safetensors"))
    pruned = sum(int((~k).sum()) for k in keep.values())
    total = sum(k.numel() for k in keep.values())
    assert pruned == round(0.5 * total)
    for name, k in keep.items():  # the final checkpoint: every pruned entry is +0.0
        w = final[name][~k]
        assert torch.all(w == 0) and not torch.any(torch.signbit(w)), name
    assert summary["sparsity"]["overall"] == pytest.approx(pruned / total)  # measured: only the pruned entries are zero

    start = [torch.load(dump / f"start_rank{r}.pt") for r in (0, 1)]
    end = [torch.load(dump / f"end_rank{r}.pt") for r in (0, 1)]
    moved = 0
    for r in (0, 1):
        assert end[r]["step"] == 4
        assert end[r]["keep"].keys() == keep.keys()
        for name, k in keep.items():
            assert torch.equal(end[r]["keep"][name], k), (r, name)  # one mask, rank 0's, on both ranks
            w = end[r]["state"][name]
            assert torch.all(w[~k] == 0) and not torch.any(torch.signbit(w[~k])), (r, name)
            moved += int((w[k] != start[r]["state"][name][k]).sum())
    for name in end[0]["state"]:  # both ranks end with the same weights, bit for bit
        assert torch.equal(end[0]["state"][name], end[1]["state"][name]), name
    assert moved > 0.5 * pruned  # the kept entries did train
