"""sparse-ft: an experiment runner for efficient fine-tuning research."""

__version__ = "0.1.0"
