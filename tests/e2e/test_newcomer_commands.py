"""Issue 15, "what a researcher hits on day one": each test fails on the code before its fix."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, compose, refused_inprocess, run_cli, run_inprocess

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(autouse=True)
def one_thread():
    # in-process runs on a 2-core box shared with other jobs: one thread is far faster
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_mrpc(root: Path, n_train: int = 24, n_dev: int = 12, with_test: bool = False) -> Path:
    """A small GLUE-layout MRPC folder (header `Quality #1 ID #2 ID #1 String #2 String`)."""
    folder = root / "MRPC"
    folder.mkdir(parents=True, exist_ok=True)
    words = "the cat sat on a mat while dogs ran past quickly and slowly today".split()

    def rows(n, seed, labeled=True):
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            a = " ".join(rng.choice(words, 6))
            b = a if i % 2 else " ".join(rng.choice(words, 6))
            out.append(f"{i % 2}\t{i}\t{i + 1000}\t{a}\t{b}" if labeled else f"{i}\t{i}\t{i + 1000}\t{a}\t{b}")
        return out

    (folder / "train.tsv").write_text("\n".join(["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", *rows(n_train, 0)]) + "\n")
    (folder / "dev.tsv").write_text("\n".join(["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", *rows(n_dev, 1)]) + "\n")
    if with_test:
        (folder / "test.tsv").write_text("\n".join(["index\t#1 ID\t#2 ID\t#1 String\t#2 String", *rows(n_dev, 2, False)]) + "\n")
    return root


# --- item 2: T5 output that is no label word / no number --------------------------------------------


def test_invalid_predictions_are_wrong_for_accuracy():
    from sparse_ft.tasks.metrics import glue_metric

    out = glue_metric("rte")(np.array([0, -1, 1, -1]), np.array([0, 0, 1, 1]))
    assert out["accuracy"] == pytest.approx(0.5) and out["invalid_predictions"] == 2
    out = glue_metric("mnli")(np.array([2, -1, -1]), np.array([2, 0, 2]))  # 3 classes
    assert out["accuracy"] == pytest.approx(1 / 3) and out["invalid_predictions"] == 2


def test_invalid_predictions_are_wrong_for_positive_class_f1():
    from sparse_ft.tasks.metrics import glue_metric

    # labels 1 1 0 0 1; preds 1 -1 -1 0 1: the -1 on a positive is a false negative, on a negative a false positive
    # TP = 2, FN = 1, FP = 1 -> F1 = 2*2 / (2*2 + 1 + 1) = 2/3; accuracy 3/5
    for task in ("mrpc", "qqp"):
        out = glue_metric(task)(np.array([1, -1, -1, 0, 1]), np.array([1, 1, 0, 0, 1]))
        assert out["f1"] == pytest.approx(2 / 3)
        assert out["accuracy"] == pytest.approx(0.6)
        assert out["main"] == pytest.approx((2 / 3 + 0.6) / 2)
        assert out["invalid_predictions"] == 2
    # every prediction invalid: no crash, nothing right
    out = glue_metric("mrpc")(np.full(4, -1), np.array([1, 0, 1, 0]))
    assert out["accuracy"] == 0.0 and out["f1"] == 0.0 and out["invalid_predictions"] == 4


def test_invalid_predictions_are_wrong_for_matthews():
    from sparse_ft.tasks.metrics import glue_metric

    # labels 1 0 0 0; preds 1 -1 0 0 -> scored 1 1 0 0: TP=1 FP=1 TN=2 FN=0 -> 2/sqrt(12)
    out = glue_metric("cola")(np.array([1, -1, 0, 0]), np.array([1, 0, 0, 0]))
    assert out["matthews_corrcoef"] == pytest.approx(2 / math.sqrt(12))
    assert out["accuracy"] == pytest.approx(0.75) and out["invalid_predictions"] == 1


def test_invalid_regression_values_are_scored_not_dropped():
    from scipy.stats import pearsonr, spearmanr

    from sparse_ft.tasks.metrics import INVALID_REGRESSION_VALUE, glue_metric

    labels = np.array([0.4, 1.0, 2.2, 3.8, 5.0])
    preds = np.array([0.5, np.nan, 2.0, np.nan, 4.6])
    out = glue_metric("stsb")(preds, labels)
    scored = np.where(np.isnan(preds), INVALID_REGRESSION_VALUE, preds)
    assert INVALID_REGRESSION_VALUE == -1.0
    assert out["pearson"] == pytest.approx(pearsonr(scored, labels)[0])
    assert out["spearman"] == pytest.approx(spearmanr(scored, labels)[0])
    assert out["invalid_predictions"] == 2 and math.isfinite(out["main"])
    valid = glue_metric("stsb")(np.where(np.isnan(preds), labels, preds), labels)
    assert out["main"] < valid["main"]  # an invalid output costs score
    assert valid["invalid_predictions"] == 0


def test_every_glue_metric_reports_invalid_predictions():
    from sparse_ft.tasks.metrics import GLUE_METRIC_KIND, glue_metric

    for task, kind in GLUE_METRIC_KIND.items():
        labels = np.array([0.5, 1.0, 4.0, 3.0]) if kind == "correlation" else np.array([0, 1, 1, 0])
        preds = np.array([0.5, np.nan, 4.0, 2.0]) if kind == "correlation" else np.array([0, -1, 1, 0])
        out = glue_metric(task)(preds, labels)
        assert out["invalid_predictions"] == 1, task
        assert all(math.isfinite(v) for v in out.values()), (task, out)
        clean = glue_metric(task)(labels, labels)
        assert clean["invalid_predictions"] == 0 and clean["main"] == pytest.approx(1.0)
        assert out["main"] < clean["main"], task


def test_submission_file_with_invalid_t5_outputs(tmp_path):
    from sparse_ft.tasks.glue import load_glue, write_submission

    write_mrpc(tmp_path / "glue", with_test=True)
    cfg = compose(["task=mrpc", f"task.data_dir={tmp_path / 'glue'}"])
    task = load_glue(cfg.task)
    n = len(task.splits["test"])
    preds = np.array([-1, 1] * (n // 2))
    path = write_submission(task, "test", preds, tmp_path / "pred")
    values = [r.split("\t")[1] for r in path.read_text().splitlines()[1:]]
    assert values == ["0", "1"] * (n // 2)


def test_t5_on_mrpc_completes_and_reports_invalid_predictions(tmp_path):
    """A barely trained T5 generates text that is no label word: the run completes (sklearn used to
    raise "Target is multiclass but average='binary'") and says how many outputs were invalid."""
    glue = write_mrpc(tmp_path / "glue")
    s = run_inprocess(tmp_path / "r", ["model=tiny_t5", "task=mrpc", f"task.data_dir={glue}", "trainer.max_steps=2",
                                       "trainer.batch_size=8", "trainer.eval_every=1"])
    assert s["status"] == "completed", s.get("error")
    v = s["metrics"]["validation"]
    assert {"f1", "accuracy", "acc_and_f1", "invalid_predictions"} <= set(v)
    assert 0 < v["invalid_predictions"] <= 12  # the random tiny T5 generates no label words
    evals = [json.loads(l) for l in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [e["invalid_predictions"] for e in evals if e["type"] == "eval"] and all(
        e["invalid_predictions"] >= 0 for e in evals if e["type"] == "eval")


# --- item 5: unknown keys in our config groups ----------------------------------------------------


def test_misspelled_trainer_key_fails_through_the_cli_naming_the_closest_key(tmp_path):
    proc = run_cli(["model=tiny_bert", "task=synthetic_nli", "energy=off", "+trainer.lerning_rate=1e-3"], tmp_path, env=ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "trainer.lerning_rate" in out and "'lr'" in out, out[-3000:]
    assert "Traceback" not in out
    assert not list(tmp_path.rglob("checkpoints"))  # failed before anything trained


@pytest.mark.parametrize("override,key,hint", [
    ("+task.max_lenght=64", "task.max_lenght", "max_length"),
    ("+trainer.learning_rate=1e-3", "trainer.learning_rate", "lr"),
    ("+energy.interval=2", "energy.interval", "interval_s"),
    ("+model.revison=main", "model.revison", "revision"),
    ("+logger.projet=x", "logger.projet", "project"),
])
def test_unknown_keys_of_every_checked_group_are_config_errors(override, key, hint):
    from sparse_ft.config.validation import ConfigError, validate

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        validate(compose(["model=tiny_bert", "task=synthetic_nli", override]))
    assert f"{key.split('.')[0]}.{hint}" in str(err.value)


def test_known_keys_and_free_form_model_config_pass():
    from sparse_ft.config.validation import validate

    validate(compose(["model=tiny_bert", "task=synthetic_nli", "+model.config.hidden_dropout_prob=0.0", "trainer.lr=1e-3"]))
    cfg = compose(["experiment=fish_distributed", "distributed.allow_single_worker=true"])
    validate(cfg)


def test_every_preset_and_sweep_uses_only_known_keys():
    from sparse_ft.config.validation import check_unknown_keys

    for preset in sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")):
        check_unknown_keys(compose([f"experiment={preset}"]))
    for sweep in sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml")):
        check_unknown_keys(compose([f"+sweep={sweep}"]))


# --- item 6: trainer.predict=test without a test file ---------------------------------------------


def test_predict_test_without_test_file_fails_in_validation_naming_the_path(tmp_path):
    from sparse_ft.config.validation import ConfigError, validate

    glue = write_mrpc(tmp_path / "glue", with_test=False)
    cfg = compose(["model=tiny_bert", "task=mrpc", f"task.data_dir={glue}", "trainer.predict=test"])
    with pytest.raises(ConfigError, match="trainer.predict") as err:
        validate(cfg)
    assert str(glue / "MRPC" / "test.tsv") in str(err.value)
    (glue / "MRPC" / "test.tsv").write_text("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\ta b\ta b\n")
    validate(cfg)  # with the file it is fine
    mnli = compose(["model=tiny_bert", "task=mnli", f"task.data_dir={glue}", "trainer.predict=test"])
    with pytest.raises(ConfigError, match="test_matched.tsv"):
        validate(mnli)


def test_predict_test_without_test_file_exits_2_before_training(tmp_path):
    glue = write_mrpc(tmp_path / "glue", with_test=False)
    error = refused_inprocess(tmp_path / "r", ["model=tiny_bert", "task=mrpc", f"task.data_dir={glue}", "trainer.max_steps=2", "trainer.predict=test"])
    assert "test.tsv" in error
    assert not (tmp_path / "r").exists()  # refused by validation: no run directory


# --- item 7: distributed=local_sgd without torchrun -----------------------------------------------


def test_local_sgd_without_torchrun_fails_with_the_torchrun_command(monkeypatch):
    from sparse_ft.config.validation import ConfigError, validate, validate_launch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    cfg = compose(["experiment=fish_distributed", "task=digits", "model=tiny_resnet"])
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node="):
        validate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_launch(cfg, launched_by_torchrun=False, argv=["run.py", "experiment=fish_distributed", "trainer.lr=0.1"])
    assert "torchrun --nproc_per_node=N run.py experiment=fish_distributed trainer.lr=0.1" in str(err.value)
    assert "distributed.allow_single_worker=true" in str(err.value)
    # on purpose, one worker: allowed
    validate(compose(["experiment=fish_distributed", "task=digits", "model=tiny_resnet", "distributed.allow_single_worker=true"]))
    # under torchrun: allowed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    validate(cfg)
    with pytest.raises(ConfigError, match="allow_single_worker"):
        validate(compose(["experiment=fish_distributed", "distributed.allow_single_worker=maybe"]))


def test_local_sgd_cli_without_torchrun_exits_2_and_prints_the_command(tmp_path):
    proc = run_cli(["experiment=fish_distributed", "task=digits", "model=tiny_resnet", "energy=off"], tmp_path, env=ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "torchrun --nproc_per_node=N" in out and "experiment=fish_distributed" in out, out[-3000:]
    assert not list(tmp_path.rglob("checkpoints"))


# --- item 14: threads per job ---------------------------------------------------------------------

SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def test_thread_count_decision():
    from sparse_ft.core.threads import decide_threads

    assert decide_threads("auto", 16, None) is None  # alone: torch's default
    assert decide_threads("auto", 16, "hydra._internal.core_plugins.basic_launcher.BasicLauncher") is None
    assert decide_threads("auto", 16, "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher") is None  # own allocation
    assert decide_threads("auto", 16, SUBMITIT_LOCAL) == 1  # jobs side by side on this machine
    assert decide_threads("auto", 2, "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher") == 1
    assert decide_threads("auto", 2, "joblib") == 1 and decide_threads("auto", 2, "submitit_local") == 1
    assert decide_threads(3, 16, SUBMITIT_LOCAL) == 3  # an int wins
    assert decide_threads(4, 2, None) == 4
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(ValueError, match="trainer.num_threads"):
            decide_threads(bad, 2, None)


def test_num_threads_is_validated_and_applied():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from sparse_ft.config.validation import ConfigError, validate
    from sparse_ft.core.threads import configure_threads

    assert compose([]).trainer.num_threads == "auto"
    for bad in ("0", "lots", "-2"):
        with pytest.raises(ConfigError, match="trainer.num_threads"):
            validate(compose(["model=tiny_bert", "task=synthetic_nli", f"trainer.num_threads={bad}"]))
    validate(compose(["model=tiny_bert", "task=synthetic_nli", "trainer.num_threads=2"]))
    assert configure_threads(compose(["trainer.num_threads=2"])) == 2 and torch.get_num_threads() == 2
    torch.set_num_threads(3)
    assert configure_threads(compose([])) == 3  # auto outside a parallel launcher: left alone
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["hydra/launcher=submitit_local"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert configure_threads(cfg) == 1  # several jobs side by side: one thread each
    finally:
        HydraConfig.instance().cfg = None


def test_readme_says_how_to_set_threads():
    text = (REPO / "README.md").read_text()
    assert "trainer.num_threads" in text and "OMP_NUM_THREADS" in text


# --- item 11: result files readable by the group, like config.yaml ---------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_result_files_get_the_umask_mode_not_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        run = tmp_path / "r"
        s = run_inprocess(run, ["model=tiny_bert", "task=synthetic_nli", "method=fish", "method.num_samples=8", "trainer.max_steps=2",
                                "trainer.batch_size=8", "trainer.checkpoint_every=1", "task.max_eval_samples=16"])
    finally:
        os.umask(old)
    assert s["status"] == "completed"

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    want = 0o666 & ~umask
    assert mode(run / "config.yaml") == want
    files = [run / "summary.json", run / "metrics.jsonl", run / "checkpoints/final/model.safetensors", run / "delta.safetensors",
             *sorted((run / "checkpoints/last").iterdir())]
    assert len(files) > 5
    for f in files:
        assert mode(f) == want, (f, oct(mode(f)))
    assert mode(run / "checkpoints/last") == mode(run / "checkpoints/final") == 0o777 & ~umask
    assert not list(run.rglob("*.tmp"))


def test_every_atomic_write_goes_through_one_helper():
    """No module of the package makes its own temp files for results (they would be 0600)."""
    offenders = []
    for path in (REPO / "sparse_ft").rglob("*.py"):
        text = path.read_text()
        if (path.parent.name, path.name) in {("train", "checkpoint.py"), ("core", "io.py")}:
            continue
        if "mkstemp(" in text or "mkdtemp(" in text or "NamedTemporaryFile(" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


# --- item 13: the Fisher pass says how far it is -------------------------------------------------


def _linear_fisher_inputs(n=20):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    examples = [{"x": torch.randn(4), "y": torch.tensor(i % 3)} for i in range(n)]

    def collate(items):
        return {"x": torch.stack([e["x"] for e in items]), "y": torch.stack([e["y"] for e in items])}

    def per_example_loss(batch):
        return torch.nn.functional.cross_entropy(module(batch["x"]), batch["y"], reduction="none")

    return module, examples, collate, per_example_loss


def test_fisher_pass_logs_progress_when_not_a_tty(caplog):
    from sparse_ft.methods.masked.fisher import fisher_diagonal

    module, examples, collate, loss = _linear_fisher_inputs(20)
    with caplog.at_level(logging.INFO, logger="sparse_ft.methods.masked.fisher"):
        got = fisher_diagonal(module, examples, collate, loss, batch_size=2, impl="hooks", progress=False)
    assert got.num_samples == 20
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fisher (hooks)")]
    assert lines[0] == "fisher (hooks): 20 examples"
    steps = [l for l in lines if "examples (" in l]
    assert len(steps) == 10  # every 10%: batches of 2 of 20 examples
    assert "2/20 examples (10%)" in steps[0] and "20/20 examples (100%)" in steps[-1] and "s left" in steps[-1]


def test_fisher_progress_logs_on_time_too_and_stays_quiet_on_a_tty(caplog):
    from sparse_ft.methods.masked.fisher import FisherProgress

    now = [0.0]
    with caplog.at_level(logging.INFO, logger="sparse_ft.methods.masked.fisher"):
        p = FisherProgress(1000, "fisher (loop)", tty=False, interval_s=5.0, clock=lambda: now[0])
        for _ in range(30):  # 30 examples (3%), one every 1 s: a line every 5 s, none for a decile
            now[0] += 1.0
            p.update(1)
        p.close()
    timed = [r.getMessage() for r in caplog.records if "examples (" in r.getMessage()]
    assert len(timed) == 6 and timed[0].startswith("fisher (loop): 5/1000 examples (0%), 5.0 s elapsed")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparse_ft.methods.masked.fisher"):
        bar = FisherProgress(10, "fisher (loop)", tty=True)
        bar.update(10)
        bar.close()
    assert not [r for r in caplog.records if "examples" in r.getMessage()]


# --- item 8: rebuilding a sparse checkpoint writes it ----------------------------------------------


def test_sparse_checkpoints_cli_writes_the_rebuilt_checkpoint_bit_for_bit(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from sparse_ft.artifacts.sparse_checkpoints import main

    run = tmp_path / "run"
    s = run_inprocess(run, ["experiment=fish_checkpointing", "task=digits", "model=tiny_resnet", "task.max_train_samples=64",
                            "task.max_eval_samples=32", "trainer.epochs=2", "trainer.batch_size=32", "method.num_samples=16",
                            "method.density=0.1", "trainer.lr=0.05", "trainer.sparse_checkpoints_dense=true"])
    assert s["status"] == "completed"
    sparse = run / "checkpoints" / "sparse"

    def same_bits(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(
            a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)) for k in a)

    # the command line, as the README gives it: writes <run>/checkpoints/sparse/rebuilt_0001.safetensors
    proc = subprocess.run([sys.executable, "-m", "sparse_ft.artifacts.sparse_checkpoints", str(run), "1"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)
    assert info["out"] == str(sparse / "rebuilt_0001.safetensors") and info["checkpoint"] == 1 and info["checkpoints"] == 2
    assert same_bits(load_file(str(sparse / "rebuilt_0001.safetensors")), load_file(str(sparse / "dense_0001.safetensors")))
    with safe_open(str(sparse / "rebuilt_0001.safetensors"), "pt") as f:
        assert f.metadata()["checkpoint"] == "1"
    # default N = the last one; --out anywhere
    assert main([str(run), "--out", str(tmp_path / "last.safetensors")]) == 0
    assert same_bits(load_file(str(tmp_path / "last.safetensors")), load_file(str(sparse / "dense_0002.safetensors")))
    assert main([str(sparse), "0", "--out", str(tmp_path / "base.safetensors")]) == 0
    assert same_bits(load_file(str(tmp_path / "base.safetensors")), load_file(str(sparse / "base.safetensors")))
    assert main([str(run), "7"]) == 2  # no such checkpoint
    assert main([str(tmp_path), "1"]) == 2  # no sparse checkpoints here
    before = sorted(p.name for p in sparse.iterdir())
    assert main([str(run), "--list"]) == 0 and sorted(p.name for p in sparse.iterdir()) == before


@pytest.mark.slow
def test_sparse_checkpoints_and_apply_delta_help():
    for module in ("sparse_ft.artifacts.sparse_checkpoints", "sparse_ft.artifacts.apply_delta"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **ENV})
        assert proc.returncode == 0 and "usage: python -m " + module in proc.stdout, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    text = (REPO / "README.md").read_text()
    assert "python -m sparse_ft.artifacts.apply_delta" in text and "--out" in text


# --- item 4: the whole grid of a sweep, before it runs ----------------------------------------------


def test_sweep_plan_lists_the_paper_grid_with_resolved_values():
    from sparse_ft.config.sweep_plan import describe

    info = describe(["+sweep=fish_glue_table1"], limit=91)
    assert info["jobs"] == 1200
    assert info["dimensions"] == {"task": 8, "method": 5, "lr_choice": 3, "trainer.batch_size": 2, "seed": 5}
    assert len(info["shown"]) == 91
    first, bitfit = info["shown"][0], info["shown"][90]  # job order: the last key varies fastest
    assert first["overrides"] == ["task=cola", "method=dense", "lr_choice=high", "trainer.batch_size=8", "seed=1", "+sweep=fish_glue_table1"]
    assert first["values"]["trainer.lr"] == 1e-4 and first["values"]["task.name"] == "cola" and first["values"]["method.name"] == "dense"
    assert "method.density" not in first["values"]  # dense has no density
    assert bitfit["values"]["method.name"] == "bitfit" and bitfit["values"]["trainer.lr"] == 1e-3  # lr_grid.bitfit.high
    fish = info["shown"][30]
    assert fish["values"]["method.name"] == "fish" and fish["values"]["method.density"] == 0.005
    assert [j["values"]["seed"] for j in info["shown"][:5]] == [1, 2, 3, 4, 5]
    assert describe(["+sweep=fish_glue_table1", "seed=1", "trainer.batch_size=16", "lr_choice=mid"], limit=0)["jobs"] == 40


def test_sweep_plan_fast_composition_equals_hydras():
    from sparse_ft.config.sweep_plan import Planner, _resolved

    with Planner(["+sweep=fish_glue_table1", "trainer.max_steps=3"]) as planner:
        jobs = planner.plan().jobs
        for i in (0, 7, 95, 400, 1199):
            fast = _resolved(planner.compose_job_fast(jobs[i]))
            assert fast == _resolved(planner.compose_job(jobs[i])), i
            assert fast["trainer.max_steps"] == 3


@pytest.mark.slow
def test_sweep_plan_cli_on_a_command_line_grid():
    proc = subprocess.run([sys.executable, "-m", "sparse_ft.config.sweep_plan", "-m", "method=dense,fish", "seed=1,2", "model=tiny_bert",
                           "trainer.lr=1e-3,1e-4", "--limit", "5"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("8 jobs: method (2) x seed (2) x trainer.lr (2)")
    assert "showing the first 5 (--limit 5)" in out
    assert "#4  method=fish seed=1 model=tiny_bert trainer.lr=0.001" in out and "#5" not in out  # as Hydra numbers and writes them
    assert "    method.density = 0.005" in out and "    trainer.lr = 0.001" in out and "    trainer.lr = 0.0001" in out
    bad = subprocess.run([sys.executable, "-m", "sparse_ft.config.sweep_plan", "method=no_such,fish"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, **ENV})
    assert bad.returncode == 2 and "no_such" in bad.stderr and "Traceback" not in bad.stderr


def test_readme_documents_the_sweep_plan():
    assert "python -m sparse_ft.config.sweep_plan +sweep=fish_glue_table1" in (REPO / "README.md").read_text()
