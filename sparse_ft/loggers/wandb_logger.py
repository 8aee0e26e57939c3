"""Weights & Biases tracker (`logger=wandb`, conf/logger/wandb.yaml).

One job = one W&B run, whose files live in `<run dir>/wandb/`:

- `wandb.init(project, entity, group=<experiment | sweep>, job_type=<method>, tags=[task, model,
  method, *logger.tags], name=<run dir name>, config=<the resolved Hydra config>, dir=<run dir>,
  id=<wandb_id.txt>, resume="allow", reinit="finish_previous")`. The id is written to
  `<run dir>/wandb_id.txt` and reused when the file is there, so resuming an interrupted run in the
  same run directory continues the same W&B run.
- `log(record)`: every metrics.jsonl record at `step=record["step"]`, keys namespaced by record
  type (`train/loss`, `eval/validation/accuracy`, `final/validation/accuracy`, `final/main`).
- `log_summary(summary)`: summary.json flattened into `run.summary` (`params/updated_fraction`,
  `energy/kwh_power_integral`, `memory/peak_bytes/train`, `metrics/main`, ...).
- `log_series(name, rows)`: a time series (energy / memory samples) as a `wandb.Table`
  (`series/<name>`), downsampled to at most `MAX_TABLE_ROWS` rows.
- `finish(exit_code)`: `run.finish(exit_code=...)`, then the W&B service is shut down so the
  run's `.wandb` file is complete on disk when the job returns (multirun: the next job starts a
  fresh run and service; nothing merges).

Nothing here raises into the run: a W&B failure is logged, the tracker turns itself off, and
`status` (`{"wandb": {"ok": false, "reason": ...}}`) says what happened, for summary.json.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import string
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..core.io import atomic_write_text
from .base import NullLogger, flatten, scalar

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
ID_FILE = "wandb_id.txt"
MAX_TABLE_ROWS = 10_000  # W&B's limit for a logged Table
MAX_TAG_LEN = 64  # W&B rejects longer tags
ATTACH_DIR = "sparse_ft"  # <W&B files dir>/sparse_ft/: copies of the run directory's record
ATTACHED_FILES = ("summary.json", "run.log")  # config.yaml is already W&B's config
_ID_OK = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")  # W&B forbids / \ # ? % : in run ids


def new_run_id(length: int = 8) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def run_id_for(run_dir: Path) -> str:
    """The W&B run id of this run directory: read from `wandb_id.txt`, else created and saved."""
    path = Path(run_dir) / ID_FILE
    try:
        saved = path.read_text(encoding="utf-8").strip()
    except OSError:
        saved = ""
    if saved and _ID_OK.match(saved):
        return saved
    if saved:
        log.warning("W&B: ignoring unusable run id %r in %s", saved, path)
    run_id = new_run_id()
    atomic_write_text(path, run_id + "\n")
    return run_id


def _hydra_runtime() -> tuple[str | None, str | None]:
    """(sweep dir name, job number) when this job is part of a Hydra multirun, else (None, None)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None, None
        sweep_dir = hc.sweep.dir
        return (Path(sweep_dir).name if sweep_dir else None), str(hc.job.num)
    except Exception:  # noqa: BLE001 - naming is cosmetic, never fatal
        return None, None


def group_for(cfg: DictConfig, lcfg: DictConfig) -> str | None:
    """`logger.group`, else the experiment name (`cfg.name`), else the multirun sweep dir name."""
    if lcfg.get("group"):
        return str(lcfg.group)
    if cfg.get("name"):
        return str(cfg.name)
    sweep, _ = _hydra_runtime()
    return sweep


def run_name_for(run_dir: Path) -> str:
    """The run directory's name; a multirun job dir (`<sweep>/<n>`) becomes `<sweep>-<n>`."""
    run_dir = Path(run_dir)
    if run_dir.name.isdigit() and run_dir.parent.name:
        return f"{run_dir.parent.name}-{run_dir.name}"
    return run_dir.name


def tags_for(cfg: DictConfig, lcfg: DictConfig) -> list[str]:
    base = [_sel(cfg, "task.name"), _sel(cfg, "model.name"), _sel(cfg, "method.name")]
    extra = list(lcfg.get("tags") or [])
    tags: list[str] = []
    for tag in base + extra:
        if tag is None or str(tag) == "":
            continue
        tag = str(tag)[:MAX_TAG_LEN]
        if tag not in tags:
            tags.append(tag)
    return tags


def _sel(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # noqa: BLE001
        return None


def config_dict(cfg: DictConfig) -> dict:
    """The whole run config for `wandb.config`, resolved; unresolvable interpolations kept as text."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception as err:  # noqa: BLE001
        log.warning("W&B: config could not be fully resolved (%s); logging it unresolved", err)
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def metrics_of(record: dict) -> dict:
    """A metrics.jsonl record → W&B keys: `<type>/[<split>/]<name>` for every scalar in it."""
    kind = str(record.get("type") or "metrics")
    prefix = kind
    if record.get("split") is not None:
        prefix = f"{kind}/{record['split']}"
    body = {k: v for k, v in record.items() if k not in ("type", "step", "split")}
    out = {}
    for key, value in flatten(body, prefix).items():
        value = scalar(value)
        if value is not None:
            out[key] = value
    return out


def summary_of(summary: dict) -> dict:
    """summary.json → flat `run.summary` keys (`params/updated_fraction`, `memory/peak_bytes/train`)."""
    out = {}
    for key, value in flatten(summary).items():
        if isinstance(value, bool):
            pass  # JSON true/false in the summary (a history metric would be 0/1)
        elif isinstance(value, (list, tuple)):
            value = [v if isinstance(v, bool) or v is None else (scalar(v) if scalar(v) is not None else str(v)) for v in value]
        elif value is not None:
            plain = scalar(value)
            value = plain if plain is not None else str(value)
        out[key] = value
    return out


class WandbLogger:
    """A live W&B run. Build it with `WandbLogger.start(cfg, run_dir)`, which never raises."""

    name = "wandb"

    def __init__(self, run: Any, mode: str, run_dir: Path, info: dict):
        self._run = run
        self.mode = mode
        self.run_dir = Path(run_dir)
        self._status: dict = {"ok": True, "mode": mode, **info}
        self._active = True  # logging still on
        self._finished = False

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: DictConfig, run_dir: Path) -> "WandbLogger | DisabledWandbLogger":
        lcfg = cfg.logger
        mode = str(lcfg.get("mode") or "offline").lower()
        if mode == "disabled":  # nothing is written, W&B is not even imported
            return DisabledWandbLogger({"ok": True, "mode": "disabled"})
        run_dir = Path(run_dir)
        try:
            import wandb

            if mode == "online" and not _has_credentials():
                # wandb.init would otherwise ask on a TTY (and hang a batch job with a pty)
                raise RuntimeError(
                    "no W&B credentials: set WANDB_API_KEY or run `wandb login`"
                    " (or use logger.mode=offline and `wandb sync` later)"
                )
            run_dir.mkdir(parents=True, exist_ok=True)
            run_id = run_id_for(run_dir)
            settings = wandb.Settings(
                silent=True,  # no banners / sync hints on the console; run.log has ours
                console="off",  # don't wrap stdout/stderr (Hydra's run.log already has the log)
                disable_job_creation=True,  # no W&B "job" artifacts
                x_save_requirements=False,  # summary.json has the versions that matter
            )
            run = wandb.init(
                project=lcfg.get("project") or "sparse-ft",
                entity=lcfg.get("entity") or None,
                group=group_for(cfg, lcfg),
                job_type=_sel(cfg, "method.name"),
                tags=tags_for(cfg, lcfg),
                notes=lcfg.get("notes") or None,
                name=run_name_for(run_dir),
                config=config_dict(cfg),
                dir=str(run_dir),
                id=run_id,
                resume="allow",
                reinit="finish_previous",  # multirun: a job never continues the previous job's run
                mode=mode,
                settings=settings,
            )
        except Exception as err:  # noqa: BLE001 - W&B must never take the run down
            reason = f"W&B could not start ({mode}): {type(err).__name__}: {err}"
            log.error("W&B: %s; continuing without W&B (the run directory has everything)", reason)
            return DisabledWandbLogger({"ok": False, "mode": mode, "reason": reason})
        info = {"id": run.id, "project": run.project, "group": run.group or None, "name": run.name}
        try:
            info["sync_dir"] = str(run.settings.sync_dir)
            if mode == "online":
                info["url"] = run.url
        except Exception:  # noqa: BLE001
            pass
        log.info("W&B %s run %s (%s)%s", mode, run.id, info.get("url") or info.get("sync_dir"),
                 "; upload later with `wandb sync <run dir>/wandb/offline-run-*`" if mode == "offline" else "")
        return cls(run, mode, run_dir, info)

    # ---- the interface ------------------------------------------------------------------------
    @property
    def status(self) -> dict:
        return {"wandb": dict(self._status)}

    def _fail(self, what: str, err: BaseException) -> None:
        reason = f"{what} failed: {type(err).__name__}: {err}"
        log.warning("W&B: %s; W&B logging is off for the rest of this run", reason)
        self._status.update(ok=False, reason=reason)
        self._active = False

    def log(self, record: dict) -> None:
        if not self._active:
            return
        try:
            data = metrics_of(record)
            if not data:
                return
            step = record.get("step")
            if step is None:
                self._run.log(data)
            else:
                self._run.log(data, step=int(step))
        except Exception as err:  # noqa: BLE001
            self._fail("log", err)

    def log_summary(self, summary: dict) -> None:
        if not self._active:
            return
        try:
            self._run.summary.update(summary_of(summary))
        except Exception as err:  # noqa: BLE001
            self._fail("log_summary", err)

    def log_series(self, name: str, rows: list[dict]) -> None:
        if not self._active or not rows:
            return
        try:
            import wandb

            columns: list[str] = []
            for row in rows:
                for key in row:
                    if str(key) not in columns:
                        columns.append(str(key))
            stride = -(-len(rows) // MAX_TABLE_ROWS)  # ceil: keep at most MAX_TABLE_ROWS rows
            kept = rows[::stride]
            data = []
            for row in kept:
                values = {str(k): v for k, v in row.items()}
                data.append([_cell(values.get(c)) for c in columns])
            table = wandb.Table(columns=columns, data=data)
            self._run.log({f"series/{name}": table}, commit=False)
            self._run.summary[f"series/{name}/rows"] = len(rows)
            if stride > 1:
                self._run.summary[f"series/{name}/stride"] = stride
        except Exception as err:  # noqa: BLE001
            self._fail("log_series", err)

    def finish(self, exit_code: int) -> None:
        """End the W&B run (always, also after a logging failure) and flush it to disk."""
        if self._finished:
            return
        self._finished = True
        self._active = False
        code = _exit_code(exit_code)
        self._status["exit_code"] = code
        try:
            self._save_run_files()
            self._run.finish(exit_code=code)
        except Exception as err:  # noqa: BLE001
            self._fail("finish", err)
        _teardown_if_idle()

    def _save_run_files(self) -> None:
        """Copy the run directory's own record into the W&B run's files (`files/sparse_ft/`).

        Copies, not `run.save` symlinks: a run directory rsync'ed off a cluster still syncs, and
        nothing collides with W&B's own `config.yaml` / `wandb-summary.json`."""
        if self._status.get("ok") is False:
            return
        try:
            dest = Path(self._run.dir) / ATTACH_DIR
            for name in ATTACHED_FILES:
                src = self.run_dir / name
                if src.is_file():
                    dest.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest / name)
                    # registered so that `wandb sync` / the online run uploads it
                    self._run.save(str(dest / name), base_path=self._run.dir, policy="now")
        except Exception as err:  # noqa: BLE001 - a missing attachment is not worth failing for
            log.debug("W&B: could not attach the run files: %s", err)


def _has_credentials() -> bool:
    """Whether an API key / identity token is configured (env, settings, .netrc), asking nobody.

    `wandb.login(prompt=False)` would say False whenever $WANDB_MODE is offline/disabled, even
    though `logger.mode=online` wins over it in `wandb.init`, hence the pinned private helper."""
    try:
        from wandb.sdk import wandb_login

        ok, _ = wandb_login._login(prompt=False, verify=False, _silent=True, update_api_key=False)
        return bool(ok)
    except (ImportError, AttributeError, TypeError):  # another wandb version: let wandb.init decide
        return True


def _exit_code(value: Any) -> int:
    """`sys.exit`-style codes: None → 0, an int as is, anything else (a message) → 1."""
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


def _cell(value: Any) -> Any:
    """A table cell: numbers stay numbers, numeric text (rows read from a CSV) becomes one."""
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return value
    plain = scalar(value)
    if plain is None and value is not None:
        return str(value)
    return plain


def _teardown_if_idle() -> None:
    """Shut the W&B service down when no run is left, so the `.wandb` file is fully written now.

    `run.finish()` returns before wandb-core has flushed the transaction log; the rest reaches
    the disk only when the service stops (at interpreter exit otherwise). A job that returns
    with a complete run on disk is what `wandb sync`, a killed SLURM array or the next multirun
    job can rely on. The next `wandb.init` simply starts a new service."""
    try:
        import wandb

        if wandb.run is None:
            wandb.teardown()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - teardown may sys.exit on a service error
        log.warning("W&B: service shutdown failed: %s: %s", type(err).__name__, err)


class DisabledWandbLogger(NullLogger):
    """W&B off (`logger.mode=disabled`) or failed to start: does nothing, reports why."""

    name = "wandb"

    def __init__(self, status: dict):
        self._status = dict(status)

    @property
    def status(self) -> dict:
        return {"wandb": dict(self._status)}
