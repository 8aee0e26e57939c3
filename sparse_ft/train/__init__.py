"""The training loop: the trainer (fires events, names no method and no callback), the evaluator,
optimizer and schedule, checkpoints, distributed helpers, pre-emption, and the built-in callbacks."""
