"""The W&B tracker (`logger=wandb`): real offline W&B runs, checked in the files W&B writes.

Offline W&B keeps everything in `<run dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb`, a
LevelDB-style log of protobuf `Record`s (what `wandb sync` uploads); `read_records` below
decodes it, so these tests see exactly what would reach the W&B server.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import compose

WANDB = ["logger=wandb", "model=tiny_bert", "task=synthetic_nli"]

TRAIN = {"type": "train", "step": 10, "epoch": 0, "loss": 0.6931, "lr": 5e-5}
EVAL = {"type": "eval", "step": 20, "epoch": 0, "split": "validation", "accuracy": 0.75, "main": 0.75}
FINAL = {"type": "final", "step": 20, "validation": {"accuracy": 0.75, "main": 0.75}, "main": 0.75}
SUMMARY = {
    "status": "completed",
    "task": "synthetic_nli",
    "metrics": {"validation": {"accuracy": 0.75, "main": 0.75}, "main": 0.75},
    "params": {"total": 1000, "trainable": 1000, "updated": 120, "updated_fraction": 0.12},
    "energy": {"available": False, "reason": "no GPU", "kwh_power_integral": None, "gpus": []},
    "memory": {"device": "cpu", "peak_bytes": {"setup": 10, "train": 123456}},
}


# ---- reading what W&B wrote ------------------------------------------------------------------

def read_records(path: Path) -> list:
    """Decode a `.wandb` transaction log: a 7-byte header (":W&B", 0xBEE1, version), then 32 KiB
    blocks of chunks (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B transaction log"
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0:  # zero padding to the end of the block
            pos += left - 7
            continue
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1:
            payload = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            payload, pending = pending + chunk, b""
        else:
            raise AssertionError(f"bad chunk type {kind} in {path}")
        record = pb.Record()
        record.ParseFromString(payload)
        out.append(record)
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


class WandbRun:
    """Everything one offline run directory holds: run record, config, history rows, summary, exit."""

    def __init__(self, sync_dir: Path):
        self.sync_dir = sync_dir
        (self.log_path,) = sync_dir.glob("run-*.wandb")
        self.records = read_records(self.log_path)
        kinds = [r.WhichOneof("record_type") for r in self.records]
        self.kinds = kinds
        (self.run,) = [r.run for r, k in zip(self.records, kinds) if k == "run"]
        self.config = {u.key: json.loads(u.value_json) for u in self.run.config.update}
        for r, k in zip(self.records, kinds):
            if k == "config":
                self.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        self.history = []
        self.summary: dict = {}
        for r, k in zip(self.records, kinds):
            if k == "history":
                row = {_key(i): json.loads(i.value_json) for i in r.history.item}
                self.history.append(row)
            elif k == "summary":
                for u in r.summary.update:
                    self.summary[_key(u)] = json.loads(u.value_json)
        self.saved_files = [f.path for r, k in zip(self.records, kinds) if k == "files" for f in r.files.files]
        exits = [r.exit for r, k in zip(self.records, kinds) if k == "exit"]
        self.exit_code = exits[-1].exit_code if exits else None

    def rows_with(self, key: str) -> list[dict]:
        return [row for row in self.history if key in row]


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """Offline W&B whose caches/settings live in tmp_path; nothing reaches the network or $HOME."""
    home = tmp_path / "wandb_home"
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_RESUME", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # belt and braces: no real server, ever
    yield home
    import wandb

    wandb.teardown()  # no service, run or login session leaks into the next test


def build(overrides: list[str], run_dir: Path):
    from sparse_ft.loggers import build_logger

    return build_logger(compose(WANDB + overrides), run_dir)


def log_a_run(logger, exit_code: int = 0) -> None:
    for record in (TRAIN, EVAL, FINAL):
        logger.log(record)
    logger.log_series("energy", [{"t_s": 0.0, "gpu": 0, "power_w": 100.0}, {"t_s": 1.0, "gpu": 0, "power_w": 110.0}])
    logger.log_summary(SUMMARY)
    logger.finish(exit_code)


# ---- offline runs --------------------------------------------------------------------------

def test_offline_run_holds_config_metrics_and_summary(wandb_env, tmp_path):
    run_dir = tmp_path / "runs" / "12-00-00-000001-42_synthetic_nli_dense_tiny_bert"
    run_dir.mkdir(parents=True)
    (run_dir / "run.log").write_text("[INFO] training\n")
    logger = build(["name=exp_a", "logger.tags=[smoke]", "logger.notes=hello"], run_dir)
    assert logger.status["wandb"]["ok"] is True and logger.status["wandb"]["mode"] == "offline"
    log_a_run(logger)

    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    (sync_dir,) = offline_runs(run_dir)
    assert sync_dir.name.endswith(f"-{run_id}")
    assert (sync_dir / f"run-{run_id}.wandb").is_file()
    status = logger.status["wandb"]
    assert status["ok"] is True and status["id"] == run_id and Path(status["sync_dir"]) == sync_dir
    assert status["exit_code"] == 0

    w = WandbRun(sync_dir)
    # init arguments
    assert w.run.run_id == run_id and w.run.project == "sparse-ft"
    assert w.run.run_group == "exp_a"  # logger.group=null → the experiment name
    assert w.run.job_type == "dense"
    assert list(w.run.tags) == ["synthetic_nli", "tiny_bert", "dense", "smoke"]
    assert w.run.display_name == run_dir.name and w.run.notes == "hello"
    # the whole resolved config
    assert w.config["model"]["name"] == "tiny_bert" and w.config["task"]["name"] == "synthetic_nli"
    assert w.config["method"]["name"] == "dense" and w.config["seed"] == 42
    assert w.config["logger"]["mode"] == "offline" and w.config["name"] == "exp_a"
    # step metrics at their own step, namespaced by record type (and split)
    (train,) = w.rows_with("train/loss")
    assert train["_step"] == 10 and train["train/loss"] == pytest.approx(0.6931) and train["train/lr"] == pytest.approx(5e-5)
    (ev,) = w.rows_with("eval/validation/accuracy")
    assert ev["_step"] == 20 and ev["eval/validation/accuracy"] == 0.75
    assert ev["final/validation/accuracy"] == 0.75 and ev["final/main"] == 0.75  # same step: one row
    assert not any(k.rsplit("/", 1)[-1] in ("type", "split", "step") for row in w.history for k in row)
    # summary.json, flattened
    assert w.summary["params/updated_fraction"] == 0.12
    assert w.summary["memory/peak_bytes/train"] == 123456
    assert w.summary["metrics/main"] == 0.75 and w.summary["metrics/validation/accuracy"] == 0.75
    assert w.summary["status"] == "completed" and w.summary["energy/available"] is False
    assert w.summary["energy/kwh_power_integral"] is None and w.summary["energy/reason"] == "no GPU"
    # the time series table
    assert w.summary["series/energy/rows"] == 2
    (table,) = sync_dir.glob("files/media/table/series/energy_*.table.json")
    t = json.loads(table.read_text())
    assert t["columns"] == ["t_s", "gpu", "power_w"] and t["data"] == [[0.0, 0, 100.0], [1.0, 0, 110.0]]
    # the run directory's own files travel with the W&B run
    attached = sync_dir / "files" / "sparse_ft" / "run.log"
    assert not attached.is_symlink() and attached.read_text() == "[INFO] training\n"
    assert "sparse_ft/run.log" in w.saved_files  # registered for upload by `wandb sync`
    # finished, with the job's exit code
    assert w.exit_code == 0


def test_two_jobs_in_one_process_are_two_runs(wandb_env, tmp_path, monkeypatch):
    """Multirun runs jobs one after another in one process: each is its own W&B run."""
    from sparse_ft.loggers import wandb_logger

    dirs = [tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"]
    first = build(["seed=1"], dirs[0])
    first.log({"type": "train", "step": 5, "loss": 1.5})
    first.finish(0)
    second = build(["seed=2", "logger.group=sweep_x"], dirs[1])
    second.log({"type": "train", "step": 3, "loss": 2.5})
    monkeypatch.setattr(wandb_logger, "MAX_TABLE_ROWS", 3)  # long series are downsampled
    second.log_series("memory", [{"t_s": str(float(i)), "rss": str(i)} for i in range(7)])  # as csv.DictReader gives them
    second.finish(1)  # a failed job

    ids = [(d / "wandb_id.txt").read_text().strip() for d in dirs]
    assert ids[0] != ids[1]
    runs = [WandbRun(offline_runs(d)[0]) for d in dirs]
    assert [r.run.run_id for r in runs] == ids
    assert [r.config["seed"] for r in runs] == [1, 2]
    assert [r.run.display_name for r in runs] == ["sweep-0", "sweep-1"]
    assert runs[1].run.run_group == "sweep_x"
    assert [[row["train/loss"] for row in r.rows_with("train/loss")] for r in runs] == [[1.5], [2.5]]
    assert [r.exit_code for r in runs] == [0, 1]
    assert runs[1].summary["series/memory/rows"] == 7 and runs[1].summary["series/memory/stride"] == 3
    (table,) = offline_runs(dirs[1])[0].glob("files/media/table/series/memory_*.table.json")
    assert json.loads(table.read_text())["data"] == [[0.0, 0], [3.0, 3], [6.0, 6]]
    assert "series/memory/rows" not in runs[0].summary


def test_resume_reuses_the_saved_run_id(wandb_env, tmp_path):
    run_dir = tmp_path / "run"
    first = build([], run_dir)
    first.log({"type": "train", "step": 1, "loss": 1.0})
    first.finish(1)  # interrupted
    saved = (run_dir / "wandb_id.txt").read_text().strip()
    again = build([], run_dir)
    assert again.status["wandb"]["id"] == saved
    again.log({"type": "train", "step": 2, "loss": 0.5})
    again.finish(0)
    segments = offline_runs(run_dir)
    assert len(segments) == 2 and all(f"-{saved}" in p.name for p in segments)  # same second: "-<id>-1"
    assert [WandbRun(p).run.run_id for p in segments] == [saved, saved]
    assert WandbRun(segments[1]).rows_with("train/loss")[0]["_step"] == 2


# ---- modes and failures ----------------------------------------------------------------------

def test_disabled_mode_writes_nothing_and_never_calls_wandb(wandb_env, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called in disabled mode"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = build(["logger.mode=disabled"], run_dir)
    log_a_run(logger)
    assert list(run_dir.iterdir()) == []
    assert logger.status == {"wandb": {"ok": True, "mode": "disabled"}}


def test_mode_defaults_to_WANDB_MODE_and_an_override_wins(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose(WANDB).logger.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose(WANDB).logger.mode == "disabled"
    assert compose(WANDB + ["logger.mode=online"]).logger.mode == "online"


def test_a_failing_wandb_log_does_not_raise_and_the_run_still_finishes(wandb_env, tmp_path, monkeypatch):
    from wandb.sdk.wandb_run import Run

    run_dir = tmp_path / "run"
    logger = build([], run_dir)
    logger.log({"type": "train", "step": 1, "loss": 1.0})

    def broken(self, *args, **kwargs):
        raise RuntimeError("wandb exploded")

    monkeypatch.setattr(Run, "log", broken)
    logger.log({"type": "train", "step": 2, "loss": 0.9})  # must not raise
    monkeypatch.undo()
    logger.log({"type": "train", "step": 3, "loss": 0.8})  # off for the rest of the run
    logger.log_summary(SUMMARY)
    logger.finish(0)
    status = logger.status["wandb"]
    assert status["ok"] is False and "wandb exploded" in status["reason"] and "log" in status["reason"]
    w = WandbRun(offline_runs(run_dir)[0])
    assert [row["_step"] for row in w.rows_with("train/loss")] == [1]
    assert w.exit_code == 0  # finished anyway: the next job cannot merge into it


def test_an_init_failure_gives_a_no_op_logger_with_the_reason(wandb_env, tmp_path, monkeypatch):
    import wandb

    from sparse_ft.loggers import wandb_logger

    def refuse(*args, **kwargs):
        raise wandb.errors.CommError("no route to api.wandb.ai")

    monkeypatch.setattr(wandb, "init", refuse)
    monkeypatch.setattr(wandb_logger, "_has_credentials", lambda: True)  # logged in; the server is not there
    logger = build(["logger.mode=online"], tmp_path / "run")
    log_a_run(logger, exit_code=1)
    status = logger.status["wandb"]
    assert status["ok"] is False and status["mode"] == "online" and "no route to api.wandb.ai" in status["reason"]


def test_online_without_credentials_never_prompts(wandb_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    import wandb

    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init reached without credentials"))
    logger = build(["logger.mode=online"], tmp_path / "run")
    log_a_run(logger)
    status = logger.status["wandb"]
    assert status["ok"] is False and "no W&B credentials" in status["reason"]
    assert not (tmp_path / "run" / "wandb").exists()


def test_group_and_name(monkeypatch):
    from sparse_ft.loggers import wandb_logger as wl

    assert wl.group_for(compose(WANDB), compose(WANDB).logger) is None  # a single run, no experiment
    monkeypatch.setattr(wl, "_hydra_runtime", lambda: ("17-05-03-123456-99", "3"))  # inside a multirun
    assert wl.group_for(compose(WANDB), compose(WANDB).logger) == "17-05-03-123456-99"
    cfg = compose(WANDB + ["name=glue_rte"])
    assert wl.group_for(cfg, cfg.logger) == "glue_rte"
    cfg = compose(WANDB + ["name=glue_rte", "logger.group=mine"])
    assert wl.group_for(cfg, cfg.logger) == "mine"
    assert wl.run_name_for(Path("out/multirun/2026-01-01/17-05-03-123456-99/3")) == "17-05-03-123456-99-3"
    assert wl.run_name_for(Path("out/runs/2026-01-01/17-05-03-1_rte_fish_bert_large")) == "17-05-03-1_rte_fish_bert_large"


def test_logger_none_and_bad_config_values(tmp_path):
    from sparse_ft.config.validation import ConfigError
    from sparse_ft.loggers import NullLogger, build_logger

    none = build_logger(compose(["model=tiny_bert", "task=synthetic_nli"]), tmp_path / "run")
    assert isinstance(none, NullLogger) and none.status == {}
    log_a_run(none)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"^logger\.mode: 'ofline'"):
        build_logger(compose(WANDB + ["logger.mode=ofline"]), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^logger\.name"):
        build_logger(compose(WANDB + ["logger.name=mlflow"]), tmp_path / "run")


def test_record_and_summary_keys():
    from sparse_ft.loggers.wandb_logger import metrics_of, summary_of

    assert metrics_of(TRAIN) == {"train/epoch": 0, "train/loss": 0.6931, "train/lr": 5e-5}
    assert metrics_of(EVAL) == {"eval/validation/epoch": 0, "eval/validation/accuracy": 0.75, "eval/validation/main": 0.75}
    assert metrics_of(FINAL) == {"final/validation/accuracy": 0.75, "final/validation/main": 0.75, "final/main": 0.75}
    assert metrics_of({"type": "train", "step": 1, "loss": None, "flag": True, "note": "x", "v": [1, 2]}) == {"train/flag": 1, "train/note": "x"}
    flat = summary_of(SUMMARY)
    assert flat["params/updated_fraction"] == 0.12 and flat["memory/peak_bytes/train"] == 123456
    assert flat["energy/kwh_power_integral"] is None and flat["energy/gpus"] == []

