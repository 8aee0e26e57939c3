"""environment.yml mirrors pyproject.toml's pins (`make env-file` writes it with sparse_ft.tools.envfile)."""

from conftest import REPO


def test_environment_yml_mirrors_pyproject():
    from sparse_ft.tools.envfile import render

    assert (REPO / "environment.yml").read_text() == render(REPO / "pyproject.toml")
