"""`python -m sparse_ft.tools.inspect_weights weights MODEL`: how many weights of a pretrained checkpoint are near
zero, per module type (the Essential Sparsity paper's Figure 1 question: where do the
low-magnitude weights sit?).

MODEL is a model config name (`minilm`, `bert_base`, `tiny_bert`: conf/model/<name>.yaml), a
Hugging Face hub id, a local directory, `bundled:<package>`, or a `.safetensors` file. The body of
the model is loaded without a task head (AutoModel). For every module type — the parameter name
with its layer indices as `*`, e.g. `encoder.layer.*.intermediate.dense.weight` — it prints the
entries, the fraction with |w| < eps (`--eps`, default 0.01), the fraction exactly zero and, with
`--sparsity s`, the fraction a one-shot global magnitude pruning at s (the `omp` method's default
targets: the Linear layers of the transformer blocks) would remove from that type. `--json`
prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def load_weights(spec: str) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str] | None, str]:
    """(parameters, module class per parameter, the default prunable names or None, source)."""
    path = Path(spec)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return tensors, {n: f"{t.ndim}-D tensor" for n, t in tensors.items()}, None, str(path)
    conf = REPO / "conf" / "model" / f"{spec}.yaml"
    module, source = (_from_conf(conf) if conf.is_file() and "/" not in spec else _from_source(spec))
    from ..methods.pruning.targets import prunable

    owner = {}
    for mname, m in module.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            owner[f"{mname}.{pname}" if mname else pname] = type(m).__name__
    params = {n: p.detach() for n, p in module.named_parameters()}
    try:
        targets = list(prunable(module))
    except Exception:  # noqa: BLE001 - a model without the default targets: no OMP column
        targets = None
    return params, {n: owner.get(n, "?") for n in params}, targets, source


def _from_source(spec: str):
    from transformers import AutoModel

    from ..models.text import resolve_source

    path = resolve_source(spec, "model")
    return AutoModel.from_pretrained(path), path


def _from_conf(conf: Path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(conf)
    if cfg.get("arch") == "vision":
        from ..models.vision import build_module

        torch.manual_seed(0)
        return build_module(cfg, num_classes=10), f"{conf.stem} ({'random init' if cfg.get('random_init') else cfg.get('weights')})"
    if cfg.get("random_init"):
        from transformers import AutoConfig, AutoModel

        overrides = dict(OmegaConf.to_container(cfg.config))
        torch.manual_seed(0)
        return AutoModel.from_config(AutoConfig.for_model(overrides.pop("model_type"), **overrides)), f"{conf.stem} (random init)"
    return _from_source(str(cfg.name_or_path))


def summarise(params: dict[str, torch.Tensor], classes: dict[str, str], eps: float, targets: list[str] | None, sparsity: float | None) -> dict:
    from ..methods.pruning.masks import select
    from ..methods.pruning.targets import group_name

    pruned = None
    if sparsity is not None and targets:
        keep = select({n: params[n].abs() for n in targets}, sparsity, "global")
        pruned = {n: int((~k).sum()) for n, k in keep.items()}
    types: dict[str, dict] = {}
    for name, t in params.items():
        if not t.is_floating_point():
            continue
        row = types.setdefault(group_name(name), {"module": classes.get(name, "?"), "tensors": 0, "entries": 0, "near_zero": 0, "zero": 0, "omp_pruned": 0})
        row["tensors"] += 1
        row["entries"] += t.numel()
        row["near_zero"] += int((t.abs() < eps).sum())
        row["zero"] += int((t == 0).sum())
        if pruned is not None:
            row["omp_pruned"] += pruned.get(name, 0)
    total = {"entries": 0, "near_zero": 0, "zero": 0}
    for row in types.values():
        for k in total:
            total[k] += row[k]
        row["near_zero_fraction"] = row["near_zero"] / row["entries"]
        row["zero_fraction"] = row["zero"] / row["entries"]
        if pruned is not None:
            row["omp_pruned_fraction"] = row["omp_pruned"] / row["entries"]
        else:
            row.pop("omp_pruned")
    by_class: dict[str, dict] = {}
    for row in types.values():
        c = by_class.setdefault(row["module"], {"entries": 0, "near_zero": 0})
        c["entries"] += row["entries"]
        c["near_zero"] += row["near_zero"]
    for c in by_class.values():
        c["near_zero_fraction"] = c["near_zero"] / c["entries"]
    out = {"eps": eps, "types": types, "classes": by_class,
           "overall": {**total, "near_zero_fraction": total["near_zero"] / max(total["entries"], 1)}}
    if targets:
        tn = sum(params[n].numel() for n in targets)
        out["prunable"] = {"tensors": len(targets), "entries": tn, "near_zero_fraction": sum(int((params[n].abs() < eps).sum()) for n in targets) / tn}
        if pruned is not None:
            out["prunable"]["omp_sparsity"] = sparsity
    return out


def render(model: str, source: str, s: dict) -> str:
    omp = any("omp_pruned_fraction" in r for r in s["types"].values())
    width = max(len(k) for k in s["types"])
    lines = [f"{model} ({source}): |w| < {s['eps']:g}", "",
             f"{'module type':<{width}}  {'module':<14} {'entries':>11}  {'near-zero':>9}  {'zero':>7}" + ("  omp-pruned" if omp else "")]
    for name, r in s["types"].items():
        line = f"{name:<{width}}  {r['module'][:14]:<14} {r['entries']:>11,}  {100 * r['near_zero_fraction']:>8.2f}%  {100 * r['zero_fraction']:>6.2f}%"
        if omp:
            line += f"  {100 * r['omp_pruned_fraction']:>9.2f}%"
        lines.append(line)
    lines.append("")
    for c, r in sorted(s["classes"].items()):
        lines.append(f"{c:<14} {r['entries']:>12,} entries, {100 * r['near_zero_fraction']:.2f}% near zero")
    o = s["overall"]
    lines.append(f"{'all':<14} {o['entries']:>12,} entries, {100 * o['near_zero_fraction']:.2f}% near zero")
    if "prunable" in s:
        p = s["prunable"]
        lines.append(f"{'prunable':<14} {p['entries']:>12,} entries in {p['tensors']} Linear weights of the blocks, {100 * p['near_zero_fraction']:.2f}% near zero")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.tools.inspect_weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights", help="near-zero weights per module type of a pretrained checkpoint")
    w.add_argument("model", help="conf/model name, hub id, local directory, bundled:<package> or a .safetensors file")
    w.add_argument("--eps", type=float, default=0.01, help="|w| below this counts as near zero (default 0.01)")
    w.add_argument("--sparsity", type=float, default=None, help="also show what a global one-shot magnitude pruning at this sparsity removes per type")
    w.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.eps <= 0:
        parser.error("--eps must be > 0")
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        parser.error("--sparsity must be in [0, 1)")
    try:
        params, classes, targets, source = load_weights(args.model)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"model {args.model!r}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    summary = summarise(params, classes, args.eps, targets, args.sparsity)
    if args.json:
        print(json.dumps({"model": args.model, "source": source, **summary}, indent=2))
    else:
        print(render(args.model, source, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
