"""The runner end to end: run directory contract, architectures, reproducibility, trainer semantics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, compose, run_cli, run_dirs, run_inprocess

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=32", "trainer.batch_size=16"]
NO_DROPOUT = ["+model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]


@pytest.mark.slow
def test_cli_run_writes_the_run_directory_contract(tmp_path):
    proc = run_cli([*TINY, "trainer.max_steps=6", "trainer.eval_every=3", "trainer.log_every=1", "trainer.progress=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    for name in (".hydra/config.yaml", "config.yaml", "metrics.jsonl", "summary.json", "run.log", "checkpoints/final/model.safetensors", "energy.csv"):
        assert (run / name).exists(), name
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed"
    assert (s["task"], s["method"], s["model"], s["seed"]) == ("synthetic_nli", "dense", "tiny_bert", 42)
    assert {k: s["data"][k] for k in ("train", "validation", "test")} == {"train": 64, "validation": 32, "test": 32}
    from sparse_ft.tasks.synthetic import DEFAULT_SIZES, generate_split

    labels = [e.label for e in generate_split("validation", DEFAULT_SIZES["validation"])[:32]]  # the first 32 rows kept
    assert s["data"]["majority_class_score"]["validation"] == max(labels.count(0), labels.count(1)) / 32
    assert set(s["metrics"]) >= {"validation", "test", "main"} and s["metrics"]["main"] == s["metrics"]["validation"]["main"]
    assert s["best"]["step"] in (3, 4, 6) and "validation" in s["best"]["metrics"]
    p = s["params"]
    assert p["total"] == p["trainable"] > 0 and 0 < p["updated"] <= p["total"]
    assert math.isclose(p["updated_fraction"], p["updated"] / p["total"])
    art = s["storage"]["artifacts"]["checkpoints/final/model.safetensors"]
    assert art["bytes"] == (run / "checkpoints/final/model.safetensors").stat().st_size
    assert 0.9 < art["ratio_to_dense_fp32"] < 1.1
    assert s["energy"]["available"] is False and s["energy"]["reason"]
    assert s["memory"]["peak_bytes"]["train"] > 0
    assert s["time"]["wall_s"]["train"] > 0 and s["time"]["train_samples_per_s"] > 0 and s["time"]["steps"] == 6
    assert s["versions"]["torch"] == torch.__version__ and "git_commit" in s
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["type"] == "train"]
    assert train_steps == sorted(set(train_steps)) == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["type"] == "eval"] == [3, 4, 6]  # every 3 steps + epoch end (64/16 = 4)
    assert "synthetic_nli" in run.name and "dense" in run.name


def test_final_checkpoint_keys_are_the_models_state_dict(tmp_path):
    s = run_inprocess(tmp_path / "run", [*TINY, "trainer.max_steps=2"])
    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    cfg = compose(TINY)
    module = build_model(cfg.model, load_task(cfg.task, 0)).module
    saved = load_file(str(tmp_path / "run/checkpoints/final/model.safetensors"))
    assert set(saved) == set(module.state_dict())
    assert s["status"] == "completed"


def test_cpu_run_is_bit_reproducible_and_seed_matters(tmp_path):
    args = [*TINY, "trainer.max_steps=4"]
    a = run_inprocess(tmp_path / "a", args)
    b = run_inprocess(tmp_path / "b", args)
    c = run_inprocess(tmp_path / "c", [*args, "seed=7"])
    wa, wb, wc = (load_file(str(tmp_path / d / "checkpoints/final/model.safetensors")) for d in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["metrics"] == b["metrics"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    loss = lambda d: [json.loads(l)["loss"] for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert loss("a") == loss("b") != loss("c")


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    base = [*TINY, *NO_DROPOUT, "trainer.max_steps=2", "trainer.max_grad_norm=0", "trainer.select_best=false"]
    run_inprocess(tmp_path / "big", [*base, "trainer.batch_size=16"])
    run_inprocess(tmp_path / "acc", [*base, "trainer.batch_size=8", "trainer.grad_accum=2"])
    big = load_file(str(tmp_path / "big/checkpoints/final/model.safetensors"))
    acc = load_file(str(tmp_path / "acc/checkpoints/final/model.safetensors"))
    worst = max(float((big[k] - acc[k]).abs().max()) for k in big)
    assert worst < 1e-5


def test_best_checkpoint_is_restored_for_the_final_evaluation(tmp_path):
    s = run_inprocess(tmp_path / "r", [*TINY, "trainer.max_steps=8", "trainer.eval_every=1", "trainer.lr=3e-3"])
    evals = [json.loads(l) for l in (tmp_path / "r/metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    best = max(evals, key=lambda r: r["main"])
    assert s["best"]["main"] == best["main"] == max(r["main"] for r in evals)
    assert s["metrics"]["validation"]["main"] == pytest.approx(s["best"]["main"])


@pytest.mark.parametrize(
    "model,task,extra",
    [
        ("tiny_t5", "synthetic_nli", ["task.max_train_samples=32"]),
        ("tiny_opt", "synthetic_nli", ["task.max_train_samples=32"]),
        ("tiny_resnet", "digits", ["trainer.optimizer=sgd", "trainer.lr=0.05", "task.max_train_samples=64"]),
    ],
)
def test_every_architecture_runs_end_to_end(tmp_path, model, task, extra):
    s = run_inprocess(tmp_path / "r", [f"model={model}", f"task={task}", "trainer.max_steps=3", "trainer.batch_size=8", "task.max_eval_samples=16", *extra])
    assert s["status"] == "completed"
    assert 0.0 <= s["metrics"]["main"] <= 1.0
    assert s["params"]["updated"] > 0


def test_t5_predictions_are_decoded_label_words():
    """A model that generates exactly the target words must score 100%: decoding maps them back."""
    from sparse_ft.models.text import load_tokenizer, make_seq2seq_predict, _t5_target
    from sparse_ft.tasks import load_task

    cfg = compose(["model=tiny_t5", "task=synthetic_nli"])
    task = load_task(cfg.task, 0)
    tok = load_tokenizer(cfg.model)
    labels = [0, 1, 1, 0]

    class Oracle(torch.nn.Module):
        def generate(self, input_ids, attention_mask, **kw):
            seqs = [[0] + tok(_t5_target(task, l))["input_ids"] for l in labels]
            width = max(map(len, seqs))
            return torch.tensor([s + [0] * (width - len(s)) for s in seqs])

    predict = make_seq2seq_predict(tok, task)
    out = predict(Oracle(), {"input_ids": torch.zeros(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3)})
    assert out.tolist() == labels


def test_linear_schedule_with_warmup():
    from omegaconf import OmegaConf

    from sparse_ft.train.optim import build_scheduler

    cfg = OmegaConf.create({"warmup_steps": 2, "warmup_ratio": 0.0, "scheduler": "linear"})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(cfg, opt, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_predict_test_writes_glue_submission_files(tmp_path):
    from sparse_ft.tasks.synthetic import write_tsv

    write_tsv(tmp_path / "glue" / "RTE")
    s = run_inprocess(
        tmp_path / "r",
        ["model=tiny_bert", "task=rte", f"task.data_dir={tmp_path / 'glue'}", "trainer.max_steps=2", "task.max_train_samples=32", "trainer.predict=test"],
    )
    rows = (tmp_path / "r/predictions/RTE.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction"
    assert len(rows) - 1 == s["data"]["test"] > 0
    assert {r.split("\t")[1] for r in rows[1:]} <= {"entailment", "not_entailment"}


@pytest.mark.slow
def test_real_mrpc_with_pretrained_minilm_reports_f1_and_accuracy(tmp_path, glue_dir):
    s = run_inprocess(
        tmp_path / "r",
        ["model=minilm", "task=mrpc", f"task.data_dir={glue_dir}", "task.max_train_samples=64", "task.max_eval_samples=64", "trainer.max_steps=2", "trainer.batch_size=16"],
    )
    v = s["metrics"]["validation"]
    assert {"f1", "accuracy", "main"} <= set(v)
    assert s["data"]["train"] == 64 and s["params"]["total"] == 22_713_986


@pytest.mark.slow
def test_multirun_jobs_get_their_own_directories_and_a_report(tmp_path):
    proc = run_cli(["-m", "seed=1,2", *TINY, "trainer.max_steps=2", "trainer.progress=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert len(runs) == 2
    seeds = sorted(json.loads((r / "summary.json").read_text())["seed"] for r in runs)
    assert seeds == [1, 2]
    sweep = runs[0].parent
    assert (sweep / "results.csv").exists() and (sweep / "report.md").exists()
    import csv

    rows = list(csv.DictReader(open(sweep / "results.csv")))
    assert sorted(r["seed"] for r in rows) == ["1", "2"] and all(r["status"] == "completed" for r in rows)
    mains = [float(r["metrics.main"]) for r in rows]
    mean, std = np.mean(mains) * 100, np.std(mains, ddof=1) * 100
    assert f"{mean:.2f} ± {std:.2f} (2)" in (sweep / "report.md").read_text()
    pngs = list(sweep.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.slow
def test_run_directories_never_collide_for_simultaneous_starts(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, str(REPO / "run.py"), f"output_root={tmp_path}", *TINY, "trainer.max_steps=1", "energy=off"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    runs = run_dirs(tmp_path)
    assert len(runs) == 2 and runs[0] != runs[1]
    assert all(json.loads((r / "summary.json").read_text())["status"] == "completed" for r in runs)


@pytest.mark.slow
def test_every_config_option_composes():
    """Each YAML of each group composes into a config that passes validation (no weights loaded)."""
    from sparse_ft.config.validation import ConfigError, task_modality, validate
    from sparse_ft.models import NLG_KINDS, TASK_ARCHS

    conf = REPO / "conf"
    for model in sorted(p.stem for p in (conf / "model").glob("*.yaml")):
        for task in sorted(p.stem for p in (conf / "task").glob("*.yaml")):
            cfg = compose([f"model={model}", f"task={task}"])
            image_model = cfg.model.arch == "vision"
            image_task = task_modality(cfg.task) == "image"
            archs = TASK_ARCHS.get(cfg.task.kind, ((cfg.model.arch,),))[0]  # squad: encoders; NLG: causal LMs
            lm_only = cfg.model.arch == "causal_lm" and cfg.task.kind not in NLG_KINDS  # a causal LM has no classifier head
            if image_model == image_task and cfg.model.arch in archs and not lm_only:
                validate(cfg)
            else:
                with pytest.raises(ConfigError, match="model"):
                    validate(cfg)
    cfg = compose(["experiment=quickstart"])
    assert cfg.model.name == "minilm" and cfg.task.name == "synthetic_nli" and cfg.name == "quickstart"
    paper = compose(["method=dense", "task=rte"])
    assert paper.model.name_or_path == "bert-large-cased" and paper.task.name == "rte"


def test_inference_latency_and_memory_at_batch_size_one(tmp_path):
    s = run_inprocess(tmp_path / "r", [*TINY, "trainer.max_steps=1", "trainer.measure_inference=true", "trainer.inference_examples=8"])
    inf = s["inference"]
    assert inf["batch_size"] == 1 and inf["examples"] == 8
    assert 0 < inf["latency_ms_median"] <= inf["latency_ms_p90"] and inf["peak_bytes"] > 0
    assert s["memory"]["peak_bytes"]["inference"] == inf["peak_bytes"] and s["time"]["wall_s"]["inference"] > 0


@pytest.mark.slow
def test_wandb_offline_run_mirrors_the_run(tmp_path):
    proc = run_cli([*TINY, "trainer.max_steps=2", "logger=wandb", "logger.mode=offline"], tmp_path, env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wbcfg"), "WANDB_CACHE_DIR": str(tmp_path / "wbcache"), "WANDB_BASE_URL": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    s = json.loads((run / "summary.json").read_text())
    wid = (run / "wandb_id.txt").read_text().strip()
    assert s["wandb"]["ok"] is True and s["wandb"]["id"] == wid
    (offline,) = list((run / "wandb").glob(f"offline-run-*-{wid}"))
    assert (offline / f"run-{wid}.wandb").stat().st_size > 1000
