"""sparse-ft entry point: `python run.py method=<m> task=<t> model=<x> [key=value ...]` (add -m to sweep)."""

import hydra
from omegaconf import DictConfig

import sparse_ft.config.resolvers  # noqa: F401  (registers ${run_stamp:} used in run-directory names)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from sparse_ft.jobs.entry import run

    return run(cfg)


if __name__ == "__main__":
    import sys

    from sparse_ft.config.validation import command_line_key_error

    misspelled = command_line_key_error(sys.argv[1:])  # before Hydra, whose advice (add +) cannot work
    if misspelled is not None:
        print(f"Error: {misspelled}", file=sys.stderr)
        sys.exit(2)
    main()
