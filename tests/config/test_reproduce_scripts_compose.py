"""sweeps/reproduce_cpu.sh and sweeps/reproduce_gpu.sh: every sweep they launch composes (each job's
config resolves through Hydra, nothing trains), and the CPU one runs only offline material."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO
from sparse_ft.config.validation import validate
from sparse_ft.config.sweep_plan import Planner

SCRIPTS = ["reproduce_cpu.sh", "reproduce_gpu.sh"]


def sweep_lines(script: str, source: Path, glue: Path) -> list[tuple[str, list[str]]]:
    out = []
    for line in (REPO / "sweeps" / script).read_text().splitlines():
        line = line.strip()  # a sweep inside a loop (ERE over the three dense sources) is composed once
        if not line.startswith(("sweep ", "sweep_each ")):
            continue
        line = line.split("  #", 1)[0]
        line = (line.replace('"${data[@]}"', f"task.data_dir={glue}").replace('"$GLUE"', str(glue))
                .replace('"$OUT/essential/0"', str(source)).replace('"$OUT/dense/0"', str(source))
                .replace('"$OUT/dense/$src"', str(source)).replace("$tag", "")
                .replace("method=$m", "method=dense"))
        words = shlex.split(line)
        out.append((words[1], words[2:]))
    return out


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_sweep_of_the_reproduction_composes_and_validates(script, tmp_path):
    glue = REPO.parent / "shared" / "data" / "glue"
    source = tmp_path / "source"  # the compress jobs' source run: only its path is composed here
    lines = sweep_lines(script, source, glue)
    assert len(lines) >= 7
    total = 0
    for name, overrides in lines:
        assert not re.search(r"\$\w", " ".join(overrides)), f"{script}: unexpanded variable in {name}"
        with Planner(overrides, REPO / "conf") as planner:
            plan = planner.plan()
            assert len(plan) >= 1, name
            cfg = planner.compose_job_fast(plan.jobs[0])
            total += len(plan)
            if script == "reproduce_cpu.sh" and cfg.get("job", "train") == "train":  # compress jobs take the source's model
                # offline: the bundled MiniLM or random-init shapes, data on disk or generated
                assert cfg.model.name_or_path is None or str(cfg.model.name_or_path).startswith("bundled:"), name
                validate(cfg)
    if script == "reproduce_cpu.sh":  # issue 24: 3 seeds x a 2-value lr grid on SST-2 (~2.5-6.5 h, the script's header) + the memory jobs alone
        # (307 in all: the ERE loop's 21 compress jobs, counted once here, run for each of the three sources)
        assert {"ere", "ere_bitq", "ere_lra"} <= {name for name, _ in lines}
        assert total < 280, f"the CPU reproduction grew to {total} jobs"
