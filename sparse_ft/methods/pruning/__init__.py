"""Pruning methods: weights set to exactly zero and kept there while the rest fine-tunes.

* `omp` — one-shot magnitude (or Fisher) pruning of the pretrained weights, then fine-tuning
  with the mask fixed (Essential Sparsity); unstructured or N:M.
* `imp` — iterative magnitude pruning with rewinding to the pretrained weights (lottery ticket:
  a dense round first, then `prune_per_round` of the remaining weights per round by the trained
  magnitudes), one training stage per round.
* `magnitude` (MaP), `movement` (MvP) — gradual pruning on Zhu & Gupta's cubic schedule, by |W|
  or by learned movement scores.
* `pst` — parameter-efficient sparse training as the authors' code runs it: W0 frozen,
  W = W0 + UV, the mask from S = |W0 + UV| + λ(α1·AB + α2·(R + C)) straight-through to all of S;
  only the small matrices (and the new head) train.

The gradual methods let only evaluations at the final sparsity compete for `trainer.select_best`
(`selectable`); every pruning method reports its trainable fraction also on the PST paper's basis
(`param_bases`: MvP's trainables, all weights + one score per prunable weight).

Shared pieces: `targets.py` (which weights are prunable), `masks.py` (choosing, storing and
measuring masks; N:M patterns), `schedule.py` (the cubic schedule), `base.py` (the in-place mask
machinery and the `finalize` every pruning method shares).
"""
