"""sparse-ft entry point: `python run.py method=<m> task=<t> model=<x> [key=value ...]` (add -m to sweep)."""

import hydra
from omegaconf import DictConfig

import sparse_ft.resolvers  # noqa: F401  (registers ${run_stamp:} used in run-directory names)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from sparse_ft.entry import run

    return run(cfg)


if __name__ == "__main__":
    main()
