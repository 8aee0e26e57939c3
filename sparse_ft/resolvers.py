"""OmegaConf resolvers the config tree uses; imported by run.py before Hydra composes."""

import os

from omegaconf import OmegaConf

# the run directory names use it so that jobs started in the same microsecond still differ
OmegaConf.register_new_resolver("pid", lambda: os.getpid(), use_cache=True, replace=True)
