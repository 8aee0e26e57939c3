"""Bad input fails fast (seconds, before weights load), names the key or file, and leaves no
run directory that looks finished."""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli, run_dirs

TINY = ["model=tiny_bert", "task=synthetic_nli", "trainer.max_steps=2", "energy=off"]


def assert_failed_cleanly(proc, tmp_path, *needles, seconds=None):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-2000:]}"
    for run in run_dirs(tmp_path):
        assert not (run / "checkpoints").exists()
        summary = run / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            assert s["status"] == "failed" and s["error"]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["model=no_such_model"], ["model/no_such_model"]),  # unknown group option (Hydra)
        (["trainer.lrr=1e-4"], ["lrr"]),  # misspelled key (Hydra struct mode)
        (["trainer.lr=-1"], ["trainer.lr"]),
        (["trainer.batch_size=0"], ["trainer.batch_size"]),
        (["task.max_train_samples=-5"], ["task.max_train_samples"]),
        (["energy.backend=gpu"], ["energy.backend"]),
        (["model=resnet34", "task=rte"], ["model", "resnet34"]),  # head/inputs do not fit the task
        (["task=digits", "model=tiny_bert"], ["model", "tiny_bert"]),
        (["trainer.predict=test"], ["trainer.predict"]),  # synthetic task has no GLUE server
    ],
)
def test_config_errors_name_the_key(tmp_path, args, needles):
    start = time.perf_counter()
    proc = run_cli([*TINY, *args], tmp_path)
    assert_failed_cleanly(proc, tmp_path, *needles)
    assert time.perf_counter() - start < 60  # seconds, not a training run (loose: 2 busy cores)


@pytest.mark.slow
def test_data_dir_without_the_tasks_files(tmp_path):
    empty = tmp_path / "glue"
    empty.mkdir()
    proc = run_cli(["model=tiny_bert", "task=rte", f"task.data_dir={empty}", "energy=off"], tmp_path)
    assert_failed_cleanly(proc, tmp_path, "RTE", str(empty))


def test_malformed_tsv_row_names_file_and_line(tmp_path):
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (rte / "train.tsv").write_text(header + "0\ta cat sat .\ta cat .\tentailment\n1\tonly two\tcolumns\n")
    (rte / "dev.tsv").write_text(header + "0\ta dog ran .\ta dog .\tentailment\n")
    proc = run_cli(["model=tiny_bert", "task=rte", f"task.data_dir={tmp_path / 'glue'}", "energy=off"], tmp_path)
    assert_failed_cleanly(proc, tmp_path, "train.tsv:3", "malformed row")


def test_unknown_hub_id_offline(tmp_path):
    proc = run_cli(
        ["model=bert_base", "model.name_or_path=no-such-org/no-such-model", "task=synthetic_nli", "energy=off"],
        tmp_path,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert_failed_cleanly(proc, tmp_path, "model.name_or_path", "no-such-org/no-such-model")
    (run,) = run_dirs(tmp_path)
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
