"""Issue 19, items 1, 8, 9, 12 and 14 (messages): empty data fails before the model loads, errors
name the file (and line), a failed source run is named as such, checkpoint manifests cannot
reach outside their folder, and the messages say what is true."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from conftest import GLUE_DIR, compose, run_cli, run_inprocess

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=16", "task.max_eval_samples=8",
        "trainer.batch_size=8", "trainer.eval_batch_size=8", "trainer.max_steps=1"]
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the errors below must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr("sparse_ft.models.build_model", refuse)


def mrpc_dir(tmp_path: Path, train_rows: int, dev_rows: int) -> Path:
    """A GLUE folder whose MRPC files hold the first rows of the real ones (0 = header only)."""
    folder = tmp_path / "glue" / "MRPC"
    folder.mkdir(parents=True)
    for name, rows in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        lines = (GLUE_DIR / "MRPC" / name).read_text(encoding="utf-8-sig").splitlines(keepends=True)
        (folder / name).write_text(MRPC_HEADER + "".join(lines[1 : 1 + rows]), encoding="utf-8")
    return folder.parent


def expect_exit_2(run_dir: Path, overrides: list[str]) -> dict:
    """The job's error as summary.json records it; a job refused before it starts (a config,
    source or manifest error: issue 19 item 11) writes no summary, and its error is the exit's cause."""
    existed = (run_dir / "summary.json").exists()
    with pytest.raises(SystemExit) as err:
        run_inprocess(run_dir, overrides)
    assert err.value.code == 2
    if not existed and not (run_dir / "summary.json").exists():
        cause = err.value.__cause__
        return {"status": "failed", "error": f"{type(cause).__name__}: {cause}"}
    s = summary(run_dir)
    assert s["status"] == "failed"
    return s


# --- item 1: a split the job needs that has no examples ---------------------------------------------


@pytest.mark.parametrize("train_rows,dev_rows,scheme,empty_file", [
    (0, 8, "glue", "train.tsv"),  # header-only train.tsv (the case)
    (8, 0, "glue", "dev.tsv"),  # header-only dev.tsv: nothing to select or report on
    (8, 1, "read", "dev.tsv"),  # the READ scheme halves a 1-row dev: validation ends up empty
])
def test_an_empty_split_fails_before_the_model_loads_naming_the_file(tmp_path, glue_dir, no_model, train_rows, dev_rows, scheme, empty_file):
    data = mrpc_dir(tmp_path, train_rows, dev_rows)
    s = expect_exit_2(tmp_path / "run", ["model=tiny_bert", "task=mrpc", f"task.data_dir={data}", f"task.split_scheme={scheme}",
                                         "trainer.max_steps=5"])
    assert str(data / "MRPC" / empty_file) in s["error"] and "has no examples" in s["error"], s["error"]
    assert "DataError" in s["error"]


def test_header_only_train_tsv_through_the_cli_exits_2_at_once(tmp_path, glue_dir):
    """The issue's command: `trainer.max_steps=5` used to spin at 100% CPU forever."""
    data = mrpc_dir(tmp_path, 0, 8)
    proc = run_cli(["model=tiny_bert", "task=mrpc", f"task.data_dir={data}", "trainer.max_steps=5", "energy=off",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert str(data / "MRPC" / "train.tsv") in out and "Traceback" not in out
    assert summary(tmp_path / "run")["status"] == "failed"


def test_the_trainer_never_spins_on_an_empty_loader(tmp_path, glue_dir, monkeypatch):
    """The defensive check in the step loop, with the job-level check switched off."""
    monkeypatch.setattr("sparse_ft.tasks.check_splits", lambda task, needed: None, raising=False)

    def stuck(signum, frame):
        raise TimeoutError("the training loop spun for 120 s on an empty loader")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(120)
    try:
        data = mrpc_dir(tmp_path, 0, 8)
        s = expect_exit_2(tmp_path / "run", ["model=tiny_bert", "task=mrpc", f"task.data_dir={data}", "trainer.max_steps=5"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "gives no training batches" in s["error"], s["error"]


# --- item 8: errors name the file (and line) ---------------------------------------------------------


def test_non_utf8_byte_in_a_tsv_names_file_line_and_column(tmp_path, glue_dir, no_model):
    data = mrpc_dir(tmp_path, 4, 4)
    train = data / "MRPC" / "train.tsv"
    lines = train.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"\t", b"\tcaf\xe9 ", 1)  # latin-1 é on line 3 (column 3 + len("caf") + 1)
    train.write_bytes(b"\n".join(lines))
    s = expect_exit_2(tmp_path / "run", ["model=tiny_bert", "task=mrpc", f"task.data_dir={data}"])
    column = lines[2].index(b"\xe9") + 1
    assert f"{train}:3: byte 0xe9 at column {column} is not UTF-8" in s["error"], s["error"]


@pytest.mark.parametrize("keep", [20, 100])  # cut inside the header / inside the data
def test_truncated_source_safetensors_names_the_file(tmp_path, keep):
    from sparse_ft.core.errors import ConfigError
    from sparse_ft.jobs.evaluate import load_weights_into

    module = torch.nn.Linear(4, 2)
    path = tmp_path / "model.safetensors"
    save_file(module.state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ConfigError, match="^source: ") as err:
        load_weights_into(module, path)
    assert str(path) in str(err.value) and "truncated or corrupted" in str(err.value)


def test_a_manifest_of_empty_braces_names_the_manifest(tmp_path, no_model):
    run = tmp_path / "run"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "last" / "manifest.json").write_text("{}")
    s = expect_exit_2(run, TINY)  # trainer.resume=auto finds it
    assert str(run / "checkpoints" / "last" / "manifest.json") in s["error"] and "not a checkpoint manifest" in s["error"], s["error"]
    assert "KeyError" not in s["error"]


def test_a_full_disk_names_the_file_being_written(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")  # every write to it fails with ENOSPC
    s = expect_exit_2(run, TINY)
    assert s["error"].startswith("StorageError: ") and f"{run / 'metrics.jsonl'}: no space left on the device" in s["error"], s["error"]


def test_atomic_writes_on_a_full_disk_name_their_target(tmp_path, monkeypatch):
    from sparse_ft.core.errors import StorageError
    from sparse_ft.core import io

    def full_temp(path):
        tmp = Path(path).parent / ".full.tmp"
        tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(io, "atomic_path", full_temp)
    with pytest.raises(StorageError, match=str(tmp_path / "summary.json")):
        io.atomic_write_text(tmp_path / "summary.json", "x" * 100_000)
    assert not (tmp_path / ".full.tmp").exists() and not (tmp_path / "summary.json").exists()


def write_last(folder: Path) -> None:
    from sparse_ft.train.checkpoint import write_checkpoint_dir

    write_checkpoint_dir(folder, {"model.safetensors": {"w": torch.ones(2)}}, {"trainer_state.pt": {"state": {"step": 1}}}, {"step": 1})


def test_a_pickle_refused_by_weights_only_says_refused_on_purpose(tmp_path):
    from sparse_ft.train.checkpoint import CheckpointError, read_checkpoint_dir

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    last = tmp_path / "last"
    write_last(last)
    torch.save({"state": Payload()}, last / "trainer_state.pt")
    manifest = json.loads((last / "manifest.json").read_text())
    manifest["files"]["trainer_state.pt"] = sha256(last / "trainer_state.pt")  # a consistent, crafted checkpoint
    (last / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint_dir(last)
    message = str(err.value)
    assert str(last / "trainer_state.pt") in message and "refused on purpose" in message, message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def test_cuda_device_without_cuda_is_a_config_error_before_loading(tmp_path, monkeypatch, no_model):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA
    s = expect_exit_2(tmp_path / "run", [*TINY, "trainer.device=cuda"])
    assert s["error"].startswith("ConfigError: trainer.device: 'cuda'") and "no CUDA device" in s["error"], s["error"]


# --- item 9: evaluating a run that failed -------------------------------------------------------------


@pytest.mark.parametrize("bad,error", [
    (["trainer.lr=-1"], "ConfigError: trainer.lr: -1 must be > 0"),  # it failed on a config error
    ([], "TrainingDiverged: loss is not finite at optimizer step 3 (epoch 0); no checkpoint was written before it"),
])
def test_evaluating_a_failed_run_says_the_source_failed_and_why(tmp_path, no_model, bad, error):
    source = tmp_path / "source"
    source.mkdir()
    OmegaConf.save(compose([*TINY, *bad]), source / "config.yaml")
    (source / "summary.json").write_text(json.dumps({"status": "failed", "error": error + "\n(second line)"}))
    s = expect_exit_2(tmp_path / "eval", ["job=evaluate", f"source={source}"])
    message = s["error"]
    assert message.startswith(f"ConfigError: source: {source}: the source run failed, so there is nothing to evaluate; its error: {error}"), message
    assert "\n" not in message and "save_final" not in message


# --- item 12: manifest file names stay inside the checkpoint folder -----------------------------------


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_manifest_names_cannot_leave_the_checkpoint_folder(tmp_path, kind):
    from sparse_ft.train.checkpoint import CheckpointError, read_checkpoint_dir

    last = tmp_path / "run" / "checkpoints" / "last"
    write_last(last)
    outside = tmp_path / "outside.pt"
    torch.save({"secret": 1}, outside)
    name = {"absolute": str(outside), "dotdot": "../../../outside.pt", "symlink": "link.pt"}[kind]
    if kind == "symlink":
        (last / "link.pt").symlink_to(outside)
    manifest = json.loads((last / "manifest.json").read_text())
    manifest["files"][name] = sha256(outside)  # the checksum matches: only the name is wrong
    (last / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint_dir(last)
    assert str(last / "manifest.json") in str(err.value) and repr(name) in str(err.value), str(err.value)


def test_plain_checkpoint_names_still_load(tmp_path):
    from sparse_ft.train.checkpoint import read_checkpoint_dir

    write_last(tmp_path / "last")
    tensors, objects, info = read_checkpoint_dir(tmp_path / "last")
    assert torch.equal(tensors["model.safetensors"]["w"], torch.ones(2)) and objects["trainer_state.pt"]["state"]["step"] == 1
    assert info == {"step": 1}


# --- item 14: messages that say what is true -----------------------------------------------------------


@pytest.mark.parametrize("job,expected", [("evaluate", "no such run directory or .safetensors file"), ("compress", "no such run directory")])
def test_missing_source_message(tmp_path, job, expected):
    from sparse_ft.core.errors import ConfigError
    from sparse_ft.config.source import source_run_dir

    with pytest.raises(ConfigError) as err:
        source_run_dir(OmegaConf.create({"job": job, "source": str(tmp_path / "nowhere")}))
    assert str(err.value).endswith(f"{tmp_path / 'nowhere'}: {expected}") and "no such a" not in str(err.value)


@pytest.mark.parametrize("offline,expected", [
    ("1", "and the Hugging Face hub is disabled (HF_HUB_OFFLINE=1), so it was not fetched: OSError: boom"),
    ("0", "and it could not be fetched from the Hugging Face hub: OSError: boom"),
])
def test_hub_error_reads_as_a_sentence(monkeypatch, offline, expected):
    from sparse_ft.models.text import _hub_error

    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    message = str(_hub_error("model.name_or_path", "org/model", OSError("boom")))
    assert expected in message and "fetched from the Hugging Face hub is disabled" not in message, message


def test_diverged_run_without_checkpoint_does_not_claim_one_is_kept(tmp_path):
    from sparse_ft.train.trainer import TrainingDiverged

    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged):
        run_inprocess(run, [*TINY, "trainer.max_steps=5", "trainer.lr=1e9", "trainer.max_grad_norm=0"])
    error = summary(run)["error"]
    assert "no checkpoint was written before it" in error and "is kept" not in error, error


def test_diverged_run_with_a_checkpoint_names_it(tmp_path):
    from sparse_ft.train.checkpoint import kept_checkpoint

    write_last(tmp_path / "checkpoints" / "last")
    said = kept_checkpoint(tmp_path / "checkpoints")
    assert said == f"the last checkpoint (step 1) is kept in {tmp_path / 'checkpoints' / 'last'}"


def test_counts_in_the_eval_log_line_are_integers(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sparse_ft"):
        run_inprocess(tmp_path / "run", TINY)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval step")]
    assert lines and all("invalid_predictions 0 " in line + " " for line in lines), lines
    assert all("invalid_predictions 0.0000" not in line for line in lines)


def test_misspelled_key_names_the_closest_valid_key_first(tmp_path):
    from sparse_ft.config.validation import command_line_key_error

    err = command_line_key_error(["model=tiny_bert", "trainer.lerning_rate=1e-3"])
    assert str(err).startswith("trainer.lerning_rate: unknown key. did you mean trainer.lr=1e-3 ('lr')?"), str(err)
    assert command_line_key_error(["trainer.lr=1e-3", "model.config.hidden_size=8", "+trainer.lr=1", "~trainer.foo", "-m"]) is None
    proc = run_cli(["model=tiny_bert", "task=synthetic_nli", "energy=off", "trainer.lerning_rate=1e-3"], tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "did you mean trainer.lr=1e-3" in out and "To append to your config use" not in out, out[-3000:]
    assert not list(tmp_path.rglob("config.yaml"))  # refused before Hydra made a run directory
