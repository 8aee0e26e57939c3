"""Per-layer weight-magnitude statistics of a pretrained checkpoint: the Essential Sparsity paper's
Figure 7 (layer-wise weight distribution of ViT-Base (SL) vs DINO-Base (SSL), "normalised with
sklearn"; DINO has ~14% more near-zero weights).

For every Linear weight inside a transformer block (the layers OMP prunes by default), the
weights are normalised with ``sklearn.preprocessing.normalize`` (each output row scaled to unit
L2 norm, sklearn's default; the paper does not say which sklearn normaliser, so
``--normalize none`` is there to compare raw magnitudes) and the fraction of entries with
``|w| < threshold`` is reported, per layer and overall.

    python -m sparse_ft.models.weight_stats model=vit_base model=dino_base --threshold 0.005 --out fig7.png

Each ``model=<preset>`` loads that preset's checkpoint (hub or cache) exactly as a run would,
with a 2-class head that is not counted; ``--json`` writes the fractions.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from torch import nn


def block_linear_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """name -> weight (out, in) of every nn.Linear below an element of an nn.ModuleList."""
    blocks = []
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList):
            blocks += [f"{name}.{child}." for child in m._modules]
    return {f"{name}.weight": m.weight.detach().float().cpu().numpy() for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and any(name.startswith(b) for b in blocks)}


def near_zero_fractions(weights: dict[str, np.ndarray], threshold: float, normalize: str = "l2_rows") -> dict:
    from sklearn.preprocessing import normalize as sk_normalize

    per_layer, sizes, small, total = {}, {}, 0, 0
    for name, w in weights.items():
        v = sk_normalize(w, norm="l2", axis=1) if normalize == "l2_rows" else w
        n = int((np.abs(v) < threshold).sum())
        per_layer[name], sizes[name] = n / v.size, int(v.size)
        small, total = small + n, total + v.size
    return {"threshold": threshold, "normalize": normalize, "overall": small / total if total else None,
            "per_layer": per_layer, "sizes": sizes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparse_ft.models.weight_stats", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model=<preset> (e.g. model=vit_base model=dino_base)")
    ap.add_argument("--threshold", type=float, default=0.005, help="|w| below this (after normalising) counts as near zero")
    ap.add_argument("--normalize", choices=("l2_rows", "none"), default="l2_rows")
    ap.add_argument("--out", type=Path, default=None, help="PNG: near-zero fraction per block, one line per model")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from hydra import compose, initialize_config_dir

    from ..tasks.base import TaskData
    from . import build_model

    results = {}
    conf = Path(__file__).resolve().parents[2] / "conf"
    for spec in args.models:
        preset = spec.split("=", 1)[1] if "=" in spec else spec
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            model_cfg = compose(config_name="config", overrides=[f"model={preset}"]).model
        image = model_cfg.get("arch") == "vision"
        task = TaskData(name="stats", modality="image" if image else "text", problem="classification", label_names=["a", "b"],
                        splits={}, train_split="train", eval_splits=["validation"], test_split=None, main_metric="accuracy",
                        metric_fn=None, image_size=32)
        bundle = build_model(model_cfg, task)
        results[preset] = near_zero_fractions(block_linear_weights(bundle.module), args.threshold, args.normalize)
        print(f"{preset}: {100 * results[preset]['overall']:.2f}% of block Linear weights near zero "
              f"(|w| < {args.threshold}, normalize={args.normalize})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        for preset, r in results.items():
            blocks: dict[int, list[float]] = {}  # block -> [near-zero entries, entries]
            for name, frac in r["per_layer"].items():
                found = re.search(r"\.(\d+)\.", name)
                acc = blocks.setdefault(int(found.group(1)) if found else 0, [0.0, 0])
                acc[0] += frac * r["sizes"][name]
                acc[1] += r["sizes"][name]
            xs = sorted(blocks)
            ax.plot(xs, [100 * blocks[x][0] / blocks[x][1] for x in xs], marker="o", label=f"{preset} ({100 * r['overall']:.1f}%)")
            ax.set_xticks(xs)
        ax.set_xlabel("transformer block")
        ax.set_ylabel(f"near-zero weights (%), |w| < {args.threshold}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
