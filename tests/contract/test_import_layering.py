"""The import layering of `sparse_ft` (issue 22, item 5), read from the source with `ast` (nothing
is imported, so a lazy import inside a function counts like one at the top of a file):

- a package imports only packages on lower floors of `FLOORS` (and itself); a module given its own
  floor there (the sparse-delta codec in artifacts/) is held to it, and may be imported from above it;
- `core` imports no other package; `methods`, `tasks` and `models` never import `train` or `jobs`
  (the issue's two rules, checked on their own so that editing the table cannot weaken them);
- no import cycle among the modules (the same rule as `../shared/tools/import_cycles.py`: a
  package's `__init__` re-exporting its own modules is not a cycle);
- no module at the top of `sparse_ft/` besides `__init__` / `__main__`.

The floors are the order the code has, not a wish: every package is on the lowest floor its imports
allow. An upward import the code has today is listed in `KNOWN_UPWARD` with its reason, so it is
visible and nothing new joins it; an entry whose import is gone fails too (remove it then)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sparse_ft"

# floor: a package may import the packages on lower floors only; a module may have its own floor
# (a codec beside the commands that use it), which then holds for it and for whoever imports it
FLOORS: dict[str, int] = {
    "core": 0,       # errors, options, io (atomic writes, safetensors), accounting
    "tasks": 1,      # data and metrics
    "loggers": 1,    # trackers (W&B)
    "telemetry": 1,  # energy, memory, time: the trainer and the jobs measure with it
    "report": 1,     # reads run directories only; it runs without torch (report/__init__.py)
    "models": 2,     # builds the model for a task (heads from the task's kind)
    "methods": 3,    # wrap / select / prune / compress a model
    "train": 4,      # trainer, evaluator, optimizer, checkpoints, callbacks
    "artifacts": 5,  # file formats and their CLIs (rebuild a model, replay checkpoints)
    "artifacts/sparse_delta.py": 1,  # the sparse-delta codec (core only): methods' writers use it
    "config": 5,     # validation across groups (calls each group's own checks), resolvers, sweep_plan
    "jobs": 6,       # entry, run directory, train / evaluate / compress jobs, Hydra callbacks
    "bench": 7,      # micro-benchmarks over everything below
    "tools": 7,      # env file, weight inspection
}

# (importing file under sparse_ft/, imported FLOORS entry): why the code has it today
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path], named: bool = False) -> list[tuple[str, int]]:
    """(module of this package imported, line) for every import statement in the file. `named`:
    `from pkg import module` counts as importing the module, not pkg's __init__ (layering)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names]
            if not (named and any(m in mods for m in names)):
                names.append(prefix)
        else:
            continue
        out += [(m, node.lineno) for m in names if m in mods and m != name]
    return out


def _entry(rel: str, floors: dict[str, int]) -> str | None:
    """The FLOORS entry that holds for a file: its own, else its top-level package's (None: the root)."""
    return rel if rel in floors else rel.split("/")[0] if "/" in rel else None


def package_edges(root: Path = PACKAGE, floors: dict[str, int] = FLOORS) -> dict[tuple[str, str], list[int]]:
    """(file relative to root, imported FLOORS entry) -> lines, between different entries only."""
    mods, edges = _modules(root), {}
    for name, path in mods.items():
        rel = path.relative_to(root).as_posix()
        for target, line in _imports(name, path, mods, named=True):
            dst = _entry(mods[target].relative_to(root).as_posix(), floors)
            if dst is not None and dst != _entry(rel, floors):
                edges.setdefault((rel, dst), set()).add(line)
    return {k: sorted(v) for k, v in edges.items()}


def upward(root: Path = PACKAGE, floors: dict[str, int] = FLOORS) -> dict[tuple[str, str], list[int]]:
    return {(rel, dst): lines for (rel, dst), lines in package_edges(root, floors).items()
            if "/" in rel and floors[dst] >= floors[_entry(rel, floors)]}


def module_cycle(root: Path = PACKAGE) -> list[str] | None:
    mods = _modules(root)
    graph = {}
    for name, path in mods.items():
        deps = {m for m, _ in _imports(name, path, mods)}
        if path.name == "__init__.py":  # re-exporting its own modules
            deps = {d for d in deps if not d.startswith(name + ".")}
        graph[name] = deps
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return err.args[1]
    return None


def _where(found: dict[tuple[str, str], list[int]]) -> str:
    return "\n".join(f"  sparse_ft/{rel}:{','.join(map(str, lines))} imports sparse_ft/{dst}"
                     for (rel, dst), lines in sorted(found.items()))


def test_every_package_is_on_a_floor():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert packages == {k for k in FLOORS if "/" not in k}, f"place each package on a floor in FLOORS: {packages ^ set(FLOORS)}"
    assert all((PACKAGE / k).is_file() for k in FLOORS if "/" in k), "a module named in FLOORS is gone"


def test_no_module_at_the_top_level():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose in (["__init__.py"], ["__init__.py", "__main__.py"]), f"move into a package: {loose}"


def test_core_imports_no_other_package():
    found = {k: v for k, v in package_edges().items() if k[0].startswith("core/")}
    assert not found, "core imports nothing of sparse_ft:\n" + _where(found)


@pytest.mark.parametrize("low", ["methods", "tasks", "models"])
def test_methods_tasks_models_never_import_train_or_jobs(low):
    found = {k: v for k, v in package_edges().items() if k[0].startswith(low + "/") and k[1].split("/")[0] in ("train", "jobs")}
    assert not found, f"{low} never imports train or jobs:\n" + _where(found)


def test_lower_floors_never_import_higher_ones():
    found = upward()
    new = {k: v for k, v in found.items() if k not in KNOWN_UPWARD}
    gone = sorted(set(KNOWN_UPWARD) - set(found))
    assert not new, "imports of a package on the same or a higher floor (see FLOORS):\n" + _where(new)
    assert not gone, f"these imports are gone: remove them from KNOWN_UPWARD: {gone}"


def test_no_import_cycles():
    assert module_cycle() is None, f"import cycle: {' -> '.join(module_cycle())}"


def test_the_checks_see_a_violation_and_a_cycle(tmp_path):
    """The scanner on a tiny package: relative, absolute and lazy imports are all found."""
    pkg = tmp_path / "sparse_ft"
    for d in ("core", "jobs"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "io.py").write_text("def f():\n    from ..jobs import entry\n")
    (pkg / "jobs" / "entry.py").write_text("import os\nfrom sparse_ft.core.io import f\n")
    floors = {"core": 0, "jobs": 1}
    assert package_edges(pkg) == {("core/io.py", "jobs"): [2], ("jobs/entry.py", "core"): [2]}
    assert upward(pkg, floors) == {("core/io.py", "jobs"): [2]}
    assert module_cycle(pkg) is not None
    (pkg / "core" / "io.py").write_text("import json\n")
    assert upward(pkg, floors) == {} and module_cycle(pkg) is None
    (pkg / "jobs" / "codec.py").write_text("")  # a module on its own floor, below its package's
    (pkg / "core" / "io.py").write_text("from ..jobs import codec\n")
    assert upward(pkg, floors) == {("core/io.py", "jobs"): [1]}
    assert upward(pkg, {"core": 1, "jobs": 2, "jobs/codec.py": 0}) == {}


def test_every_package_folder_has_an_init_so_a_wheel_ships_it():
    """pyproject's `packages.find` (not find_namespace) skips a folder without __init__.py: a
    non-editable install would then lack it (sparse_ft/train had none)."""
    missing = [str(d.relative_to(PACKAGE.parent)) for d in [PACKAGE, *PACKAGE.rglob("*")]
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").is_file()]
    assert not missing, missing
