"""Pruning methods: weights set to exactly zero and kept there while the rest fine-tunes.

* `omp` — one-shot magnitude (or Fisher) pruning of the pretrained weights, then fine-tuning
  with the mask fixed (Essential Sparsity); unstructured or N:M.
* `imp` — iterative magnitude pruning with rewinding to the pretrained weights (lottery ticket),
  one training stage per round.
* `magnitude` (MaP), `movement` (MvP) — gradual pruning on Zhu & Gupta's cubic schedule, by |W|
  or by learned movement scores.
* `pst` — parameter-efficient sparse training: W0 frozen, W = W0 + UV, the mask from
  S = |W0 + UV| + λ(α1·AB + α2·(R + C)); only the small matrices train.

Shared pieces: `targets.py` (which weights are prunable), `masks.py` (choosing, storing and
measuring masks; N:M patterns), `schedule.py` (the cubic schedule), `base.py` (the in-place mask
machinery and the `finalize` every pruning method shares).
"""
