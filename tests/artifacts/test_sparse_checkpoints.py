"""FISH §4.3: sparse checkpoints (base + per-epoch deltas of changed entries) with a mask
refreshed on a schedule; replaying them equals the dense checkpoints of the same run, bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_inprocess


@pytest.fixture(autouse=True)
def one_thread():
    # in-process runs: two threads on a 2-core box shared with other jobs are ~10x slower than one
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

TINY = ["experiment=fish_checkpointing", "task=digits", "model=tiny_resnet", "task.max_train_samples=256", "task.max_eval_samples=64",
        "trainer.epochs=3", "trainer.batch_size=32", "method.num_samples=64", "trainer.lr=0.05",
        "trainer.sparse_checkpoints_dense=true"]


def _check_replay(run):
    from sparse_ft.artifacts.sparse_checkpoints import SUBDIR, replay

    d = run / SUBDIR
    dense = sorted(d.glob("dense_*.safetensors"))
    assert len(dense) == 3 and len(sorted(d.glob("delta_*.safetensors"))) == 3
    base = load_file(str(d / "base.safetensors"))
    assert all(torch.equal(replay(run, 0)[k], base[k]) for k in base)
    for n, path in enumerate(dense, start=1):
        want, got = load_file(str(path)), replay(run, n)
        assert want.keys() == got.keys()
        for k in want:  # bit for bit, including BatchNorm statistics
            assert want[k].dtype == got[k].dtype and torch.equal(want[k].view(-1).view(torch.uint8) if want[k].is_floating_point() else want[k], got[k].view(-1).view(torch.uint8) if got[k].is_floating_point() else got[k]), (n, k)
    final = load_file(str(run / "checkpoints/final/model.safetensors"))
    last = replay(run)
    assert all(torch.equal(final[k], last[k]) for k in final)


def test_fish_refreshed_every_epoch_replays_bit_for_bit_and_is_smaller(tmp_path):
    run = tmp_path / "fish"
    s = run_inprocess(run, [*TINY, "method.density=0.1", "method.mask_refresh_epochs=1"])
    assert s["status"] == "completed"
    _check_replay(run)
    st = s["storage"]["sparse_checkpoints"]
    assert st["checkpoints"] == 3 and st["sparse_bytes"] < st["dense_bytes"]
    assert st["ratio_dense_to_sparse"] > 2.0  # 10% of the entries change per epoch: ~8 bytes each vs 4 per entry dense
    assert s["method_report"]["refreshes"] == 2  # after epochs 1 and 2 (not after the last)


@pytest.mark.parametrize("refresh", ["never", 2])
def test_other_schedules_and_random_masks(tmp_path, refresh):
    run = tmp_path / "r"
    s = run_inprocess(run, [*TINY, "method=random_mask", "method.density=0.1", f"method.mask_refresh_epochs={refresh}", "trainer.sparse_checkpoints_dense=true"])
    assert s["status"] == "completed"
    _check_replay(run)
    assert s["method_report"].get("refreshes", 0) == (0 if refresh == "never" else 1)


def test_dense_training_checkpoints_replay_too(tmp_path):
    run = tmp_path / "dense"
    s = run_inprocess(run, [*TINY, "method=dense", "trainer.epochs=3"])
    _check_replay(run)
    st = s["storage"]["sparse_checkpoints"]
    assert st["ratio_dense_to_sparse"] < 1.0  # every entry changes: index + value costs twice a dense copy
