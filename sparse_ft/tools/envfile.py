"""Prints environment.yml from pyproject.toml, so the conda file mirrors the pinned dependencies."""

import tomllib
from pathlib import Path


def render(pyproject: Path) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    lines = [
        "# Generated from pyproject.toml by `make env-file`; keep the two in step.",
        "name: sparse-ft",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        "  - python=3.11",
        "  - pip",
        "  - pip:",
        *[f"      - {d}" for d in deps],
        "      - -e .",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(Path(__file__).resolve().parents[2] / "pyproject.toml"), end="")
