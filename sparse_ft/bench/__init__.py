"""Benchmarks: `python -m sparse_ft.bench --out bench.json [--only GROUP]`.

Every figure is measured in this process, side by side with its reference, and printed as a
table; the JSON file holds one key per figure. Benchmarks use the trainer and the methods,
never the other way round.

Groups:
  trainer  runner step time vs a bare PyTorch loop (same model, batches, optimizer, clipping)
  energy   step time with the energy sampler running vs without
  fish     FISH step time and optimizer state vs dense, batched per-sample Fisher vs a loop
"""
