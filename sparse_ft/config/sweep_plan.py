"""Dry run of a sweep: every job `python run.py -m <args>` would launch, nothing trains.

    python -m sparse_ft.config.sweep_plan +sweep=fish_glue_table1 --limit 5
    python -m sparse_ft.config.sweep_plan method=dense,fish seed=1,2 model=tiny_bert

Takes the same arguments as `run.py -m`. It composes the sweep with Hydra's own machinery — the
multirun config, the grid of `hydra.sweeper.params` (from sweep files) plus the command line's
sweep overrides, expanded by Hydra's BasicSweeper in the order the jobs are numbered — and
prints the number of jobs, the grid's dimensions and, for each job (the first N with
`--limit N`), its overrides and the resolved values of the keys that vary between the jobs shown
or are computed from other keys (e.g. `trainer.lr` resolved from `lr_grid`). `--json` prints the
same as JSON. Every job's composed config is then validated exactly as `run.py` would (the
job's effective config, then `sparse_ft.config.validation.validate`): exit status 2, naming each invalid
job and its key, when one is invalid or the arguments do not compose.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError
from ..core.nested import flatten

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MISSING = "<unset>"  # compares a key one job lacks with the others


@dataclass
class SweepPlan:
    jobs: list[list[str]]  # each job's overrides, in Hydra's job order (job i = hydra.job.num i)
    dimensions: dict[str, int]  # swept key -> number of values
    sources: dict[str, str] = field(default_factory=dict)  # swept key -> "sweep file" | "command line"

    def __len__(self) -> int:
        return len(self.jobs)


def _interpolated(cfg) -> set[str]:
    """Keys (outside hydra) whose value is computed from other keys or resolvers."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    return {k for k, v in flatten(raw).items() if isinstance(v, str) and "${" in v}


def _resolved(cfg) -> dict:
    from omegaconf import OmegaConf

    job = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        return flatten(OmegaConf.to_container(job, resolve=True))
    except Exception:  # noqa: BLE001 - one bad interpolation must not hide the others
        raw = flatten(OmegaConf.to_container(job, resolve=False))
        out = {}
        for key in raw:
            try:
                value = OmegaConf.select(job, key, throw_on_missing=False)
                out[key] = OmegaConf.to_container(value, resolve=True) if hasattr(value, "keys") else value
            except Exception as err:  # noqa: BLE001
                out[key] = f"<error: {type(err).__name__}: {err}>"
        return out


class Planner:
    """Hydra initialised on conf/ for the lifetime of the object (use as a context manager)."""

    def __init__(self, overrides: list[str], config_dir: Path = CONF_DIR, config_name: str = "config"):
        self.overrides, self.config_dir, self.config_name = list(overrides), Path(config_dir), config_name
        self._init = None

    def __enter__(self):
        from hydra import initialize_config_dir

        import sparse_ft.config.resolvers  # noqa: F401  (${run_stamp:} in the run directory names)

        self._init = initialize_config_dir(config_dir=str(self.config_dir.resolve()), version_base="1.3")
        self._init.__enter__()
        from hydra.core.global_hydra import GlobalHydra
        from hydra.types import RunMode

        self.hydra = GlobalHydra.instance().hydra
        self.master = self.hydra.compose_config(self.config_name, self.overrides, run_mode=RunMode.MULTIRUN, from_shell=True)
        return self

    def __exit__(self, *exc):
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().cfg = None
        self._init.__exit__(*exc)

    def plan(self) -> SweepPlan:
        """The jobs, exactly as Hydra's BasicSweeper expands them (sweeper params, then the command line)."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        sweeper = self.master.hydra.sweeper
        target = str(sweeper.get("_target_", ""))
        if not target.endswith("BasicSweeper"):
            raise ValueError(f"hydra.sweeper is {target}: only Hydra's BasicSweeper (the default) can be listed in advance")
        params = sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
        from_params = [f"{k}={v}" for k, v in params.items()]
        task_overrides = list(OmegaConf.to_container(self.master.hydra.overrides.task, resolve=False))
        parser = OverridesParser.create(config_loader=self.hydra.config_loader)
        parsed = parser.parse_overrides(from_params + task_overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        dims, sources = {}, {}
        for i, override in enumerate(parsed):
            if override.is_sweep_override():
                key = override.get_key_element()
                dims[key] = len(list(override.sweep_string_iterator()))
                sources[key] = "sweep file (hydra.sweeper.params)" if i < len(from_params) else "command line"
        return SweepPlan(jobs, dims, sources)

    def compose_job(self, overrides: list[str]):
        """One job's config, as the launcher composes it (the master config's hydra overrides + the job's)."""
        from hydra.core.hydra_config import HydraConfig

        cfg = self.hydra.config_loader.load_sweep_config(self.master, list(overrides))
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations resolve as in the job
        return cfg

    def compose_job_fast(self, overrides: list[str]):
        """The same config as `compose_job`, composing once per combination of config-group choices:
        the job's value overrides (`trainer.lr=...`, `seed=...`) are then applied to a copy the way
        Hydra applies them after composition. A 1200-job grid of 40 group combinations composes 40 times."""
        import copy

        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        if not hasattr(self, "_bases"):
            self._bases, self._parser = {}, OverridesParser.create(config_loader=self.hydra.config_loader)
        parsed = self._parser.parse_overrides(list(overrides))
        repo = self.hydra.config_loader.repository
        groups = [o for o in parsed if o.package is not None or repo.group_exists(o.key_or_group)]
        values = [o for o in parsed if o not in groups]
        key = tuple(o.input_line for o in groups)
        if key not in self._bases:
            full = self.hydra.config_loader.load_sweep_config(self.master, list(key))
            job = OmegaConf.masked_copy(full, [k for k in full.keys() if k != "hydra"])  # copying hydra's node dominates
            OmegaConf.set_struct(job, True)
            self._bases[key] = (full, job)
        full, job = self._bases[key]
        if getattr(self, "_hydra_set", None) is not full:  # set_config copies the hydra node: only on a change
            HydraConfig.instance().set_config(full)  # ${hydra:...} interpolations resolve as in the job
            self._hydra_set = full
        if any(o.key_or_group.startswith("hydra") for o in values):
            cfg = copy.deepcopy(full)
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            HydraConfig.instance().set_config(cfg)
            self._hydra_set = cfg
            return cfg
        cfg = copy.deepcopy(job)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg


def describe(overrides: list[str], limit: int | None = None, config_dir: Path = CONF_DIR) -> dict:
    """The plan as a dict: `jobs` (count), `dimensions`, `sources`, `shown` (the first `limit` jobs,
    each with `overrides` and `values`: resolved values of the keys that vary or are computed)."""
    with Planner(overrides, config_dir) as planner:
        plan = planner.plan()
        shown_jobs = plan.jobs if limit is None else plan.jobs[: max(0, limit)]
        values, computed = [], set()
        for job in shown_jobs:
            cfg = planner.compose_job_fast(job)
            computed |= _interpolated(cfg)
            values.append(_resolved(cfg))
    keys_set = {o.lstrip("+~").split("=", 1)[0].split("@", 1)[0] for job in shown_jobs for o in job}
    all_keys = set().union(*values) if values else set()
    varying = {k for k in all_keys if len({json.dumps(v.get(k, MISSING), sort_keys=True, default=str) for v in values}) > 1}
    # a key set by an override is shown with its resolved value; a group choice by the group's name
    chosen = {k for k in keys_set if k in all_keys} | {f"{k}.name" for k in keys_set if f"{k}.name" in all_keys}
    keys = sorted((varying | computed | chosen) & all_keys - {k for k in all_keys if k.startswith("hydra.")})
    # a key a job does not have (a method's option in another method's job) is left out of that job
    shown = [{"num": i, "overrides": job, "values": {k: v[k] for k in keys if k in v}} for i, (job, v) in enumerate(zip(shown_jobs, values))]
    return {"jobs": len(plan), "dimensions": plan.dimensions, "sources": plan.sources, "shown": shown}


def job_config(planner: "Planner", overrides: list[str]):
    """One job's config as `run.py`'s task function receives it: Hydra's node removed, struct mode."""
    from omegaconf import OmegaConf

    cfg = planner.compose_job_fast(overrides)
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    OmegaConf.set_struct(cfg, True)
    return cfg


def check_job(cfg) -> None:
    """What `run.py` checks before a job starts (sparse_ft.jobs.entry.run): raises its error."""
    from .validation import validate
    from .effective import effective_config

    effective_config(cfg)
    validate(cfg)


def invalid_jobs(overrides: list[str], config_dir: Path = CONF_DIR) -> tuple[int, list[dict]]:
    """(number of jobs, [{num, overrides, error}] for every job whose config run.py would reject)."""
    bad = []
    with Planner(overrides, config_dir) as planner:
        plan = planner.plan()
        for num, job in enumerate(plan.jobs):
            try:
                check_job(job_config(planner, job))  # compose_job_fast returns the job's own copy
                continue
            except Exception as err:  # noqa: BLE001 - the job's own error, as run.py would print it
                error = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
            bad.append({"num": num, "overrides": job, "error": error})
    return len(plan), bad


def _fmt(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def render(info: dict, limit: int | None) -> str:
    dims = info["dimensions"]
    grid = " x ".join(f"{k} ({n})" for k, n in dims.items()) or "no swept keys"
    lines = [f"{info['jobs']} job{'s' if info['jobs'] != 1 else ''}: {grid}"]
    for source in sorted(set(info["sources"].values())):
        lines.append(f"  from the {source}: {', '.join(k for k, s in info['sources'].items() if s == source)}")
    if limit is not None and limit < info["jobs"]:
        lines.append(f"showing the first {len(info['shown'])} (--limit {limit})" if limit else "(--limit 0: jobs not listed)")
    for job in info["shown"]:
        lines.append("")
        lines.append(f"#{job['num']}  {' '.join(job['overrides'])}")
        for k, v in job["values"].items():
            lines.append(f"    {k} = {_fmt(v)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m sparse_ft.config.sweep_plan",
        description="List the jobs `python run.py -m <overrides>` would launch (nothing trains): their number, "
        "each job's overrides and the resolved values of the keys that vary.",
        epilog="examples: python -m sparse_ft.config.sweep_plan +sweep=fish_glue_table1 --limit 5 | "
        "python -m sparse_ft.config.sweep_plan method=dense,fish seed=1,2",
    )
    parser.add_argument("overrides", nargs="*", help="the overrides you would give `run.py -m` (e.g. +sweep=fish_glue_table1, method=dense,fish seed=1,2)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="show only the first N jobs (0: just count them)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--config-dir", type=Path, default=CONF_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args([a for a in argv if a not in ("-m", "--multirun")])
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    try:
        info = describe(args.overrides, args.limit, args.config_dir)
        total, bad = invalid_jobs(args.overrides, args.config_dir)
    except Exception as err:  # noqa: BLE001 - Hydra's composition / override errors: say what, exit 2
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(json.dumps({**info, "invalid": bad}, indent=1, default=str) if args.json else render(info, args.limit))
    if bad:
        for job in bad:
            print(f"error: job #{job['num']} ({' '.join(job['overrides'])}): {job['error']}", file=sys.stderr)
        print(f"{len(bad)} of {total} job(s) would fail validation in run.py (exit 2)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
