"""Jobs beyond one training pass: multi-stage runs (resumed inside a stage), job=evaluate and
job=compress over a finished run, and the bad inputs of each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import refused_inprocess, run_cli, run_inprocess
from sparse_ft.core.options import MethodOptions, option
from sparse_ft.methods.base import Method, SelectionChanges, Stage, Staged
from sparse_ft.methods.compress.base import CompressResult, Compressor
from sparse_ft.methods.registry import register

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16",
        "trainer.batch_size=8", "trainer.lr=1e-3"]


@dataclass
class TwoStageOptions(MethodOptions):
    second_lr: float = option(1e-4, "learning rate of the second stage", low=0, low_open=True)


@register("toy_two_stage")
class TwoStage(Staged, Method):
    """Stage 0 trains everything; stage 1 freezes the embeddings and trains on at a lower lr.
    Its state (how many stages began) must survive a resume inside stage 1."""

    name = "toy_two_stage"
    Options = TwoStageOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.began: list[int] = []

    def stages(self):
        return [Stage("dense"), Stage("no-embeddings", {"lr": self.opts.second_lr, "max_steps": 4})]

    def begin_stage(self, index, stage, ctx):
        self.began.append(index)
        if index == 1:
            for name, p in self.module.named_parameters():
                if "embeddings" in name:
                    p.requires_grad_(False)

    def prepare(self, module, ctx, resumed=None):
        super().prepare(module, ctx, resumed)
        if resumed is not None:
            self.began = list(resumed["began"])
        if 1 in self.began:  # resumed inside stage 1: the freeze is part of the state
            self.begin_stage(1, None, ctx)
            self.began.pop()

    def state_dict(self):
        return {"began": list(self.began)}

    def report(self):
        return {"began": self.began}


@register("toy_shrink")
class Shrink(Compressor):
    """Keeps half of every residual: θ + Δ/2 (a compressor whose reconstruction is known)."""

    name = "toy_shrink"

    def compress(self, base, tuned, out_dir: Path, context):
        rec = {k: (base[k] + (tuned[k] - base[k]) / 2) if tuned[k].is_floating_point() else tuned[k] for k in tuned}
        save_file({k: v.contiguous() for k, v in rec.items()}, str(out_dir / "shrink.safetensors"))
        return CompressResult(rec, {"shrink.safetensors": (out_dir / "shrink.safetensors").stat().st_size}, {"factor": 0.5})


TWO_STAGE = [*TINY, "method.name=toy_two_stage", "+method.second_lr=1e-4", "trainer.max_steps=4", "trainer.checkpoint_every=2"]


def test_two_stages_record_their_stage_and_resume_mid_stage_bit_identically(tmp_path):
    full = run_inprocess(tmp_path / "full", TWO_STAGE)
    assert full["status"] == "completed", full.get("error")
    assert [s["name"] for s in full["stages"]] == ["dense", "no-embeddings"]
    assert full["method_report"]["began"] == [0, 1]
    records = [json.loads(l) for l in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert {(r["stage"], r["step"]) for r in records if r["type"] == "train"} == {(s, k) for s in (0, 1) for k in (1, 2, 3, 4)}
    last = json.loads((tmp_path / "full/checkpoints/last/manifest.json").read_text())
    assert (last["stage"], last["step"]) == (1, 2)  # the last checkpoint is inside stage 1

    resumed = run_inprocess(tmp_path / "resumed", [*TWO_STAGE, f"trainer.resume={tmp_path / 'full'}"])
    assert resumed["resumed_from"] == {"path": str(tmp_path / "full/checkpoints/last"), "step": 2, "stage": 1}
    assert resumed["method_report"]["began"] == [0, 1]  # stage 1 did not begin twice
    a = load_file(str(tmp_path / "full/checkpoints/final/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"] == full["metrics"]
    # the embeddings froze in stage 1: the run changed them only in stage 0
    assert resumed["stages"][0] == full["stages"][0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished")
    s = run_inprocess(run, [*TINY, "method=dense", "trainer.max_steps=6", "trainer.eval_batch_size=7"])
    assert s["status"] == "completed", s.get("error")
    return run


def test_evaluate_reproduces_the_runs_final_metrics_exactly(finished, tmp_path):
    s = run_inprocess(tmp_path, ["job=evaluate", f"source={finished}"])
    source = json.loads((finished / "summary.json").read_text())
    assert s["status"] == "completed", s.get("error")
    assert s["metrics"] == source["metrics"]
    assert (s["task"], s["model"], s["job"]) == ("synthetic_nli", "tiny_bert", "evaluate")


def test_evaluate_takes_a_safetensors_file_and_checks_its_keys(finished, tmp_path):
    weights = load_file(str(finished / "checkpoints/final/model.safetensors"))
    ok = run_inprocess(tmp_path / "ok", [*TINY, "job=evaluate", f"source={finished / 'checkpoints/final/model.safetensors'}"])
    assert ok["status"] == "completed"
    weights.pop("classifier.weight")
    save_file(weights, str(tmp_path / "partial.safetensors"))
    with pytest.raises(SystemExit):
        run_inprocess(tmp_path / "bad", [*TINY, "job=evaluate", f"source={tmp_path / 'partial.safetensors'}"])
    s = json.loads((tmp_path / "bad/summary.json").read_text())
    assert "partial.safetensors" in s["error"] and "classifier.weight" in s["error"]


def test_compress_evaluates_the_reconstruction_and_reports_storage(finished, tmp_path):
    s = run_inprocess(tmp_path, ["job=compress", "method=dense", "method.name=toy_shrink", f"source={finished}"])
    assert s["status"] == "completed", s.get("error")
    art = s["storage"]["artifacts"]["shrink.safetensors"]
    assert art["bytes"] == (tmp_path / "shrink.safetensors").stat().st_size
    assert s["source"]["main"] == json.loads((finished / "summary.json").read_text())["metrics"]["main"]
    assert s["source"]["score_drop"] == pytest.approx(s["source"]["main"] - s["metrics"]["main"])
    assert s["method_report"] == {"factor": 0.5}
    # fidelity to θ' on the selection split: halving the weights changes the output distributions
    fid = s["fidelity"]
    assert fid["split"] == "validation" and fid["examples"] == s["data"]["validation"]
    assert 0.0 <= fid["agreement"] <= 1.0 and fid["kl_mean"] > 0.0 and fid["kl_max"] >= fid["kl_mean"]


def test_output_fidelity_is_argmax_agreement_and_the_mean_kl():
    from scipy.special import softmax
    from scipy.stats import entropy

    from sparse_ft.jobs.compress import output_fidelity

    rng = np.random.default_rng(0)
    ref, other = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    fid = output_fidelity(ref, other)
    kl = [entropy(p, q) for p, q in zip(softmax(ref, axis=1), softmax(other, axis=1))]  # scipy: Σ p log(p/q)
    assert fid["kl_mean"] == pytest.approx(np.mean(kl)) and fid["kl_max"] == pytest.approx(np.max(kl))
    assert fid["agreement"] == pytest.approx(np.mean(ref.argmax(1) == other.argmax(1))) and fid["examples"] == 50
    same = output_fidelity(ref, ref + 5.0)  # a shift of every logit leaves the distribution as it is
    assert same["agreement"] == 1.0 and same["kl_mean"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("args, key", [
    (["job=compress", "method.name=toy_shrink"], "source"),  # no source run
    (["job=evaluate", "source=/no/such/run"], "source"),
    (["job=compress", "method=dense", "source={finished}"], "method.name"),  # dense trains, compresses nothing
    (["job=sing"], "job"),
    (["method.name=toy_shrink"], "method.name"),  # a compressor cannot train
    (["job=evaluate", "source={finished}", "model=tiny_t5"], "model"),  # weights of another model
    (["job=evaluate", "source={finished}", "method=fish"], "method"),  # the weights are dense's, not fish's
])
def test_bad_job_input_names_the_key(args, key, finished, tmp_path, monkeypatch):
    args = [a.format(finished=finished) for a in args]
    if "model=tiny_t5" in args:  # what a command line says: the model was asked for explicitly
        monkeypatch.setattr("sparse_ft.config.source.command_line_groups", lambda: {"model", "job", "source"})
    if "method=fish" in args:
        monkeypatch.setattr("sparse_ft.config.source.command_line_groups", lambda: {"method", "job", "source"})
    error = refused_inprocess(tmp_path / "r", [*TINY, *args])  # refused before it starts: no summary, no run directory
    assert error.split(": ", 2)[1] == key, error
    assert not (tmp_path / "r").exists()


def test_compress_refuses_an_unfinished_source(finished, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.yaml").write_text((finished / "config.yaml").read_text())
    summary = json.loads((finished / "summary.json").read_text())
    (source / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    assert "not completed" in refused_inprocess(tmp_path / "c", ["job=compress", "method.name=toy_shrink", f"source={source}"])


@pytest.mark.slow
def test_evaluate_through_the_cli(finished, tmp_path):
    proc = run_cli(["job=evaluate", f"source={finished}", f"hydra.run.dir={tmp_path / 'e'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((tmp_path / "e/summary.json").read_text())
    assert s["metrics"] == json.loads((finished / "summary.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def finished_masked(tmp_path_factory) -> Path:
    """A finished run of a method other than the defaults' (dense): what its evaluation must name."""
    run = tmp_path_factory.mktemp("finished_masked")
    s = run_inprocess(run, [*TINY, "method=random_mask", "method.density=0.05", "trainer.max_steps=4"])
    assert s["status"] == "completed", s.get("error")
    return run


@pytest.mark.slow
def test_evaluate_and_compress_runs_are_named_and_labelled_after_their_source(finished_masked, tmp_path):
    """Issue 19, item 6: an evaluate run's directory and summary carry the source run's task,
    method and model (not the defaults' rte/dense/bert_large); a compress run's method is its
    compressor, with the source's method recorded beside it."""
    proc = run_cli(["job=evaluate", f"source={finished_masked}"], tmp_path)  # the run directory the defaults would name
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in (tmp_path / "runs").glob("*/*/summary.json")]
    assert run.name.endswith("_synthetic_nli_random_mask_tiny_bert_evaluate"), run.name
    s = json.loads((run / "summary.json").read_text())
    assert (s["job"], s["task"], s["method"], s["model"]) == ("evaluate", "synthetic_nli", "random_mask", "tiny_bert")
    assert s["source"]["method"] == "random_mask" and s["source"]["path"] == str(finished_masked)
    from omegaconf import OmegaConf

    assert OmegaConf.load(run / "config.yaml").method.name == "random_mask"  # config.yaml agrees with the summary

    c = run_inprocess(tmp_path / "c", ["job=compress", "method=dense", "method.name=toy_shrink", f"source={finished_masked}"])
    assert c["status"] == "completed", c.get("error")
    assert (c["job"], c["task"], c["method"], c["model"]) == ("compress", "synthetic_nli", "toy_shrink", "tiny_bert")
    assert c["source"]["method"] == "random_mask"
    # the name Hydra gives a compress run's directory (conf/config.yaml: ${run_name:...}), from the defaults' groups
    from sparse_ft.config.resolvers import run_name

    assert run_name("compress", str(finished_masked), "rte", "toy_shrink", "bert_large") == "synthetic_nli_toy_shrink_tiny_bert_compress"
    assert run_name("train", None, "rte", "fish", "bert_large") == "rte_fish_bert_large"
    weights = finished_masked / "checkpoints/final/model.safetensors"
    assert run_name("evaluate", str(weights), "mrpc", "dense", "minilm") == "mrpc_weights_minilm_evaluate"
    f = run_inprocess(tmp_path / "f", [*TINY, "job=evaluate", f"source={weights}"])
    assert f["status"] == "completed" and f["method"] is None  # a weights file does not say which method made it


@pytest.mark.parametrize("model", ["tiny_t5", "tiny_opt", "tiny_bert"])
def test_lora_merged_checkpoint_is_the_base_layout_and_scores_like_the_run(model, tmp_path):
    s = run_inprocess(tmp_path / "run", ["model=" + model, *TINY[1:], "method=lora", "trainer.max_steps=6"])
    assert s["status"] == "completed", s.get("error")
    p = s["params"]
    assert p["added"] > 0 and p["trainable"] >= p["added"]
    heads = s["method_report"]["trained_heads"]
    assert heads == ([] if model == "tiny_t5" else ["score" if model == "tiny_opt" else "classifier"])
    final = load_file(str(tmp_path / "run/checkpoints/final/model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k or "modules_to_save" in k for k in final)
    # the merged weights, loaded into the plain model by job=evaluate, score what the run scored
    e = run_inprocess(tmp_path / "eval", ["job=evaluate", f"source={tmp_path / 'run'}"])
    assert e["metrics"]["main"] == pytest.approx(s["metrics"]["main"], abs=1e-6)


@register("toy_schedule")
class Schedule(SelectionChanges, Method):
    """Asks after every step whether its selection changed; only at step 3 does it really change
    (the embeddings stop training), so the trainer must rebuild its optimizer exactly once."""

    name = "toy_schedule"

    def after_step(self, trainer):
        if trainer.state.step == 2:
            for name, p in self.module.named_parameters():
                if "embeddings" in name:
                    p.requires_grad_(False)

    def selection_changed(self, step):
        return True


def test_the_trainer_asks_every_step_and_rebuilds_only_on_a_real_change(tmp_path, monkeypatch):
    from sparse_ft.train.trainer import Trainer

    rebuilds, context = [], {}
    original = Trainer.rebuild_optimizer
    monkeypatch.setattr(Trainer, "rebuild_optimizer", lambda self: (rebuilds.append(self.state.step), original(self))[1])
    original_prepare = Schedule.prepare

    def prepare(self, module, ctx, resumed=None):
        context.update(total=ctx.total_steps, per_epoch=ctx.steps_per_epoch, model=ctx.model_cfg.name, bundle=ctx.bundle is not None)
        original_prepare(self, module, ctx, resumed)

    monkeypatch.setattr(Schedule, "prepare", prepare)
    s = run_inprocess(tmp_path, [*TINY, "method.name=toy_schedule", "trainer.max_steps=5"])
    assert s["status"] == "completed", s.get("error")
    assert rebuilds == [2]  # step index 2 (the third step): once, although it was asked 5 times
    assert context == {"total": 5, "per_epoch": 8, "model": "tiny_bert", "bundle": True}
    final = load_file(str(tmp_path / "checkpoints/final/model.safetensors"))
    assert s["params"]["updated"] > 0 and "bert.embeddings.word_embeddings.weight" in final


def test_random_init_with_a_name_or_path_is_a_logged_choice(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="sparse_ft"):
        s = run_inprocess(tmp_path, [*TINY, "method=dense", "trainer.max_steps=1", "model.name_or_path=/nonexistent"])
    assert s["status"] == "completed"
    assert any("model.name_or_path=/nonexistent is not loaded" in r.getMessage() for r in caplog.records)


def test_diff_pruning_second_stage_finetunes_the_projection_and_resumes_inside_it(tmp_path):
    args = [*TINY, "method=diff_pruning", "method.density=0.01", "method.finetune_steps=4", "trainer.max_steps=4",
            "trainer.checkpoint_every=2"]
    full = run_inprocess(tmp_path / "full", args)
    assert full["status"] == "completed", full.get("error")
    assert [s["name"] for s in full["stages"]] == ["diff", "finetune_projection"]
    r = full["method_report"]
    assert 0 < r["finetune_entries"] <= r["k"] and r["projected_entries"] <= r["k"]
    assert full["params"]["updated"] <= r["k"]  # the second stage moved only projected entries (+ head)
    resumed = run_inprocess(tmp_path / "resumed", [*args, f"trainer.resume={tmp_path / 'full'}"])
    assert resumed["resumed_from"]["stage"] == 1
    a = load_file(str(tmp_path / "full/checkpoints/final/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
