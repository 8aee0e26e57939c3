"""Developer commands outside a run: the near-zero weights of a pretrained checkpoint
(`inspect_weights`) and environment.yml from pyproject.toml (`envfile`)."""
