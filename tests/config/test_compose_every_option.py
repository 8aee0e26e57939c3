"""Every option of every config group composes into `run.py`'s config and passes the checks a job
gets before it starts (issue 22, item 5; lightning-hydra-template's test_configs): each file
conf/<group>/<option>.yaml is composed with `<group>=<option>` through Hydra's compose API, as
`python -m sparse_ft.config.sweep_plan` does (its Planner, job_config and check_job: the same
`effective_config` + `validate` that sparse_ft.jobs.entry.run calls), nothing loads or trains.
A sweep file (`+sweep=<name>`) is expanded into its jobs and every job is checked.

An option that cannot run with the defaults (model=bert_large task=rte method=dense) is composed
with what it needs, chosen from its own YAML: a companion task for an image or causal-LM model, a
companion model for an image or data-to-text task, a finished source run for a compressor
(`job=compress source=<run dir>`), and the environment torchrun gives its workers for
`distributed=local_sgd`. Nothing is excluded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REPO, compose
from omegaconf import OmegaConf

from sparse_ft.config.sweep_plan import Planner, check_job, job_config
from sparse_ft.config.validation import task_modality
from sparse_ft.methods import method_class
from sparse_ft.models import NLG_KINDS

CONF = REPO / "conf"
GROUPS = sorted(d.relative_to(CONF).as_posix() for d in CONF.rglob("*") if d.is_dir() and any(d.glob("*.yaml")))  # conf/sweep -> ../sweeps too
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))]

TASK_FOR_MODEL = {"vision": "task=cifar100", "causal_lm": "task=e2e"}  # by the model's arch; others run task=rte
MODEL_FOR_IMAGE_TASK, MODEL_FOR_NLG_TASK = "model=tiny_vit", "model=tiny_gpt2"
TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}  # torchrun --nproc_per_node=2, rank 0


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A finished training run as run.py leaves it for job=compress: config.yaml and summary.json."""
    run = tmp_path_factory.mktemp("source") / "run"
    run.mkdir()
    cfg = compose(["model=tiny_bert", "task=synthetic_nli", "method=dense"])
    OmegaConf.save(cfg, run / "config.yaml")
    (run / "summary.json").write_text('{"status": "completed"}')
    return run


def _needs(group: str, option: str, source_run: Path) -> list[str]:
    """The overrides an option needs besides itself, read from its YAML (and the method registry)."""
    yaml = OmegaConf.load(CONF / group / f"{option}.yaml")
    extra = []
    if group == "model":
        extra += [TASK_FOR_MODEL[yaml.arch]] if yaml.arch in TASK_FOR_MODEL else []
    if group == "task":
        if task_modality(yaml) == "image":
            extra.append(MODEL_FOR_IMAGE_TASK)
        elif yaml.kind in NLG_KINDS:
            extra.append(MODEL_FOR_NLG_TASK)
    compressor = group == "method" and getattr(method_class(yaml.name), "kind", "trainer") == "compressor"
    if compressor or yaml.get("job") == "compress":
        extra += ["job=compress", f"source={source_run}"]
    return extra


def _override(group: str, option: str) -> str:
    return f"+{group}={option}" if group == "sweep" else f"{group}={option}"  # sweeps are not in the defaults list


# a sweep file is checked job by job (up to a few hundred jobs: ~5-50 s each here): marked slow
PARAMS = [pytest.param(g, o, id=f"{g}={o}", marks=[pytest.mark.slow] if g == "sweep" else []) for g, o in OPTIONS]


@pytest.mark.parametrize(("group", "option"), PARAMS)
def test_option_composes_and_validates(group, option, source_run, monkeypatch):
    overrides = [_override(group, option), *_needs(group, option, source_run)]
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    with Planner(overrides) as planner:
        master = planner.master
        assert master.hydra.runtime.choices.get(group) == option, f"{group}={option} was not chosen"
        if master.distributed.mode == "local_sgd":  # local SGD refuses to start outside torchrun
            for key, value in TORCHRUN_ENV.items():
                monkeypatch.setenv(key, value)
        if group.startswith("hydra/"):  # the plugin the option names is installed and importable
            from hydra.utils import get_class

            get_class(master.hydra[group.split("/")[1]]._target_)
        sweeper = str(master.hydra.sweeper.get("_target_", ""))
        jobs = planner.plan().jobs if sweeper.endswith("BasicSweeper") else [[]]  # Optuna picks its jobs as it goes
        assert jobs
        for job in jobs:
            try:
                check_job(job_config(planner, job))
            except Exception as err:
                raise AssertionError(f"{' '.join(job or overrides)}: {type(err).__name__}: {err}") from err


def test_every_yaml_under_conf_is_an_option_here():
    """Every YAML file under conf/ (links followed) but config.yaml itself is composed above."""
    files = {(Path(d).relative_to(CONF).as_posix(), f[:-5]) for d, _, names in os.walk(CONF, followlinks=True)
             for f in names if f.endswith(".yaml") and Path(d) != CONF}
    assert files == set(OPTIONS)
    assert {"model", "task", "method", "trainer", "logger", "energy", "distributed", "experiment", "sweep",
            "hydra/launcher", "hydra/sweeper"} <= set(GROUPS)
