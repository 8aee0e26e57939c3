"""Measurements that measure the method, not the harness (issue 21): no copies inside the `train`
phase (best-checkpoint selection keeps only what training changes, outside that phase; the
initial weights for `params.updated` stay on disk), inference figures from a clean state.

The memory tests run each job in a fresh process (peak RSS per phase, above the RSS at job
start) on a tiny T5 whose tied embedding makes a state_dict copy large (d_model 512: 65 MB of
unique weights, 4 names for the embedding)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_cli, run_dirs

WIDE_T5 = ["model=tiny_t5", "model.config.d_model=512", "task=synthetic_nli", "task.max_train_samples=32", "task.max_eval_samples=8",
           "trainer.batch_size=8", "trainer.max_steps=3", "trainer.save_final=false", "energy=off", "trainer.progress=false"]


def _summary(root: Path) -> dict:
    (run,) = run_dirs(root)
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed", s.get("error")
    return s


def _vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_select_best_adds_no_state_dict_to_the_train_phase_of_a_frozen_backbone_method(tmp_path):
    # READ trains a small side network; its frozen T5 must not be copied into the train phase
    peaks, dense_bytes = {}, None
    for select in ("true", "false"):
        res = run_cli([*WIDE_T5, "method=read", "trainer.eval_every=1", f"trainer.select_best={select}"], tmp_path / select)
        assert res.returncode == 0, res.stderr[-3000:]
        s = _summary(tmp_path / select)
        peaks[select] = s["memory"]["peak_bytes_above_start"]["train"]
        dense_bytes = s["storage"]["dense_fp32_bytes"]
        if select == "true":
            assert "select_best" in s["memory"]["peak_bytes"]  # the copy has a phase of its own
            assert not list((tmp_path / select).rglob(".best.rank*.safetensors"))  # deleted at the end
    # the old copy was the whole state_dict (tied embedding four times: ~4x dense_bytes); now the
    # side network's tensors only, written outside the train phase
    assert peaks["true"] - peaks["false"] < dense_bytes / 2, (peaks, dense_bytes)


def test_inference_is_measured_without_training_state(tmp_path):
    res = run_cli([*WIDE_T5, "method=dense", "trainer.measure_inference=true", "trainer.inference_examples=4"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    s = _summary(tmp_path)
    above = s["memory"]["peak_bytes_above_start"]
    # the eval phase still holds AdamW's moments (130 MB here); the inference phase must not
    assert above["inference"] < above["eval"] - s["optimizer"]["state_bytes"] / 2, (above, s["optimizer"])


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.out = nn.Linear(8, 50, bias=False)
        self.out.weight = self.emb.weight  # tied: two names, one storage
        self.frozen = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.norm = nn.BatchNorm1d(8)


def _frozen_net() -> _Net:
    torch.manual_seed(0)
    net = _Net()
    for p in [*net.emb.parameters(), *net.frozen.parameters()]:
        p.requires_grad_(False)
    return net


def test_best_weights_keep_only_what_training_changes_and_restore_bit_identical(tmp_path):
    from sparse_ft.train.best import BestWeights

    for store in ("disk", "memory"):
        net = _frozen_net()
        best = BestWeights(store, tmp_path / store / ".best.safetensors")
        best.begin(net)
        with torch.no_grad():
            net.head.weight.add_(1.0)
            net.norm.running_mean.add_(2.0)
            net.frozen.bias[0] = 5.0  # a frozen tensor written in place: kept too
        keys = best.changed_keys(net)
        assert sorted(keys) == sorted(["head.weight", "head.bias", "norm.weight", "norm.bias", "norm.running_mean",
                                       "norm.running_var", "norm.num_batches_tracked", "frozen.bias"])
        best.keep(net)
        kept = {k: v.clone() for k, v in net.state_dict().items()}
        assert (tmp_path / store / ".best.safetensors").is_file() == (store == "disk")
        with torch.no_grad():
            net.head.weight.mul_(3.0)
            net.norm.running_mean.zero_()
            net.frozen.bias.zero_()
        best.restore(net)
        for k, v in net.state_dict().items():
            assert torch.equal(v, kept[k]), k
        best.clear()
        assert best.empty and not (tmp_path / store / ".best.safetensors").exists()


def test_best_weights_refuse_a_frozen_tensor_first_written_after_the_best(tmp_path):
    from sparse_ft.train.best import BestWeights

    net = _frozen_net()
    best = BestWeights("memory")
    best.begin(net)
    best.keep(net)
    with torch.no_grad():
        net.frozen.weight.add_(1.0)  # left out as unchanged, written later: its best value is unknown
    with pytest.raises(RuntimeError, match="frozen.weight"):
        best.restore(net)


def test_initial_weights_stay_on_disk_and_count_updated_exactly(tmp_path):
    from sparse_ft.accounting import InitialWeights

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(2048, 4096), nn.Linear(4096, 8))  # 33.6 MB of fp32
    size = sum(p.numel() * 4 for p in module.parameters())
    reference = {n: p.detach().clone() for n, p in module.named_parameters()}  # the test's own copy
    before = _vm_rss()
    initial = InitialWeights(module, tmp_path / ".initial.pt")
    grown = _vm_rss() - before
    assert grown < size / 4, (grown, size)  # an in-memory snapshot would add `size`
    with torch.no_grad():
        module[0].weight[:3, :5] += 1.0
        module[1].bias[2] = -module[1].bias[2]
        module[1].weight[0, 0] = module[1].weight[0, 0]  # rewritten with the same bits: unchanged
    weights = {n: p.detach() for n, p in module.named_parameters()}
    expected = sum(int((weights[n] != reference[n]).sum()) for n in reference)
    assert expected == 16
    assert initial.count_updated(weights) == expected
    initial.close()
    assert not (tmp_path / ".initial.pt").exists()
