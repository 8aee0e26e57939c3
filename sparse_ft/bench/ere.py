"""The ERE benchmark group: `bench_ere(args) -> dict` (to be registered in `sparse_ft.bench.__main__.GROUPS`).

In one process; all but the last block on synthetic matrices of MiniLM-L6's shapes (no model, no data):

  ere_svd_exact_vs_randomized_speedup   384x1536 residual, rank 8: seconds of torch.linalg.svd /
                                        seconds of torch.svd_lowrank (q = r + 8, 4 power iterations);
                                        best of `args.repeats`, alternating
  ere_svd_randomized_error_excess       on the same matrix: ‖Δ − Δ_r‖² of the randomized factors over
                                        that of the exact ones, minus 1 (0.001 = 0.1% more error)
  ere_svd_speedup_<n>x<m>_r<r>,         the same for 384x384, 384x1536 and 1536x384 at r = 8, 32, 88
  ere_svd_error_excess_<n>x<m>_r<r>     (svd=auto takes randomized up to r = 40 on 384-wide matrices), with
  ere_svd_*_seconds_*                   the seconds behind them
  ere_svd_note                          one sentence: which is faster, and whether it is as accurate
  ere_seconds_per_matrix                wall seconds of ERE's compress() (r = 8, b = 4, svd=auto) on a
                                        MiniLM-shaped residual (37 matrices incl. the 30522x384 word
                                        embeddings), divided by the number of matrices coded
  ere_synthetic_storage_ratio           that artifact's bytes / the dense fp32 checkpoint (22.7M params)
  ere_synthetic_rel_error               ‖Δ̂ − Δ‖_F / ‖Δ‖_F over all coded matrices
  bitq_synthetic_storage_ratio, ..._rel_error    BITQ at b = 4 (per-row scales) on the same residual
  lra_synthetic_storage_ratio, ..._rel_error     LRA at r = 8 (fp16 factors) on the same residual

  ere_storage_ratio, ere_score_drop, on a real fine-tune, measured in this run: a dense fine-tune (the
  ere_real_*                            source) is compressed by `job=compress method=ere` (r = 8, b = 4, in
                                        process); the ratio is the artifact's bytes on disk over the dense fp32
                                        checkpoint, the drop the source's main score minus the reconstruction's
                                        (a 0–1 metric: 0.01 = 1 point). The source is the run dir given by
                                        `args.ere_source` or $SPARSE_FT_BENCH_ERE_SOURCE (e.g. MiniLM on real MRPC),
                                        else a tiny BERT (random init, 2 layers, hidden 32) fine-tuned here on
                                        synthetic_nli for 2 epochs (~30 s on a CPU); `ere_real_source` says which
                                        model/task/run the two figures are from.

The synthetic residual of every matrix is low rank plus noise: singular values exp(−l/τ) with τ
drawn per matrix from [2, 40] (layers decay very differently, as papers/ere.txt §3.1 observes),
entries of RMS 1e-3 (the weights': 0.04), plus 1% of that as Gaussian noise; biases and LayerNorms change a little;
the classifier is new. It is *not* a fine-tuned model: the score drop and the storage ratio of a
real fine-tune (`ere_storage_ratio`, `ere_score_drop`) come from the real source above, through
`ere_storage_and_drop` over its `job=compress` run.

Uses `args.repeats` (the bench CLI's flag; default 3) and `args.ere_source` where the CLI has it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, FFN, LAYERS, VOCAB, POSITIONS = 384, 1536, 6, 30522, 512
SVD_SHAPES = ((384, 384), (384, 1536), (1536, 384))
SVD_RANKS = (8, 32, 88)


def minilm_shapes() -> dict[str, tuple[int, ...]]:
    """The tensors of a MiniLM-L6 (BERT, hidden 384) sequence classifier, by Hugging Face name."""
    e = "bert.embeddings."
    shapes = {f"{e}word_embeddings.weight": (VOCAB, HIDDEN), f"{e}position_embeddings.weight": (POSITIONS, HIDDEN),
              f"{e}token_type_embeddings.weight": (2, HIDDEN), f"{e}LayerNorm.weight": (HIDDEN,), f"{e}LayerNorm.bias": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[f"{p}{name}.weight"], shapes[f"{p}{name}.bias"] = (HIDDEN, HIDDEN), (HIDDEN,)
        shapes[f"{p}attention.output.LayerNorm.weight"] = shapes[f"{p}attention.output.LayerNorm.bias"] = (HIDDEN,)
        shapes[f"{p}intermediate.dense.weight"], shapes[f"{p}intermediate.dense.bias"] = (FFN, HIDDEN), (FFN,)
        shapes[f"{p}output.dense.weight"], shapes[f"{p}output.dense.bias"] = (HIDDEN, FFN), (HIDDEN,)
        shapes[f"{p}output.LayerNorm.weight"] = shapes[f"{p}output.LayerNorm.bias"] = (HIDDEN,)
    shapes["bert.pooler.dense.weight"], shapes["bert.pooler.dense.bias"] = (HIDDEN, HIDDEN), (HIDDEN,)
    return shapes


def synthetic_residual(n: int, m: int, tau: float, scale: float, g: torch.Generator) -> torch.Tensor:
    """n x m, singular values ≈ scale·exp(−l/τ) (random directions), plus 1e-2·scale noise per entry."""
    k = min(n, m)
    sigma = torch.exp(-torch.arange(k, dtype=torch.float32) / tau)
    a = torch.randn(n, k, generator=g) / math.sqrt(n)
    b = torch.randn(k, m, generator=g) / math.sqrt(m)
    d = (a * sigma) @ b
    d *= scale / float(d.norm() / math.sqrt(d.numel()))  # entries of RMS `scale`
    return d + 1e-2 * scale * torch.randn(n, m, generator=g)


def minilm_pair(seed: int = 0) -> tuple[dict, dict]:
    """(θ, θ') of MiniLM's shapes: random weights (std 0.04) and a synthetic fine-tuning residual."""
    g = torch.Generator().manual_seed(seed)
    base, tuned = {}, {}
    for key, shape in minilm_shapes().items():
        w = torch.randn(shape, generator=g) * 0.04 if len(shape) == 2 else torch.randn(shape, generator=g) * 0.02
        base[key] = w
        if len(shape) == 2:
            tau = float(2 + 38 * torch.rand(1, generator=g))
            tuned[key] = w + synthetic_residual(shape[0], shape[1], tau, 1e-3, g)
        else:
            tuned[key] = w + 1e-3 * torch.randn(shape, generator=g)
    tuned["classifier.weight"] = torch.randn(2, HIDDEN, generator=g) * 0.02
    tuned["classifier.bias"] = torch.zeros(2)
    return base, tuned


def _best(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def svd_comparison(repeats: int = 3, device: str = "cpu") -> dict:
    from ..methods.compress.lowrank import truncated_svd

    g = torch.Generator().manual_seed(1)
    out = {}
    for n, m in SVD_SHAPES:
        x = synthetic_residual(n, m, 20.0, 1.0, g).to(device)
        truncated_svd(x, 1, "exact")  # warm-up
        # the exact SVD costs the same at every rank: timed once per shape, alternating with the
        # randomized ones, best of `repeats` each
        t_exact, t_rand = math.inf, {r: math.inf for r in SVD_RANKS}
        for _ in range(repeats):
            t_exact = min(t_exact, _best(lambda: truncated_svd(x, SVD_RANKS[0], "exact"), 1))
            for r in SVD_RANKS:
                t_rand[r] = min(t_rand[r], _best(lambda: truncated_svd(x, r, "randomized"), 1))
        out[f"ere_svd_exact_seconds_{n}x{m}"] = t_exact
        for r in SVD_RANKS:
            errs = {}
            for mode in ("exact", "randomized"):
                u, s, v, _ = truncated_svd(x, r, mode)
                errs[mode] = float((x - (u * s) @ v.T).double().pow(2).sum())
            out[f"ere_svd_speedup_{n}x{m}_r{r}"] = t_exact / t_rand[r]
            out[f"ere_svd_error_excess_{n}x{m}_r{r}"] = errs["randomized"] / errs["exact"] - 1.0
            out[f"ere_svd_randomized_seconds_{n}x{m}_r{r}"] = t_rand[r]
    return out


def _compress(name: str, opts: dict, base: dict, tuned: dict) -> tuple[dict, float]:
    from omegaconf import OmegaConf

    from ..methods import build_method

    method = build_method(OmegaConf.create({"name": name, **opts}))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = method.compress(base, tuned, Path(tmp))
        seconds = time.perf_counter() - start
    return result.report, seconds


def bench_ere(args) -> dict:
    repeats = int(getattr(args, "repeats", 3) or 3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"ere_device": device}
    svd = svd_comparison(repeats, device)
    key = "384x1536_r8"
    results["ere_svd_exact_vs_randomized_speedup"] = svd[f"ere_svd_speedup_{key}"]
    results["ere_svd_randomized_error_excess"] = svd[f"ere_svd_error_excess_{key}"]
    speed, excess = svd[f"ere_svd_speedup_{key}"], svd[f"ere_svd_error_excess_{key}"]
    results["ere_svd_note"] = (f"384x1536 at r=8: randomized SVD (q=r+8, 4 power iterations) is {speed:.1f}x "
                               f"{'faster' if speed >= 1 else 'slower'} than exact, with {100 * excess:.3f}% more squared error "
                               f"({'as accurate' if excess < 1e-2 else 'less accurate'})")
    results.update(svd)

    base, tuned = minilm_pair(0)
    ere, seconds = _compress("ere", {"rank_prior": 8, "bits": 4, "svd": "auto", "device": device}, base, tuned)
    results["ere_seconds_per_matrix"] = seconds / max(ere["tensors"]["coded"], 1)
    results["ere_synthetic_storage_ratio"] = ere["storage_ratio"]
    results["ere_synthetic_rel_error"] = ere["rel_error"]
    results["ere_synthetic_bytes"] = ere["bytes"]["total"]
    results["ere_synthetic_mean_rank"] = ere["mean_rank"]
    for name, opts in (("bitq", {"bits": 4}), ("lra", {"rank": 8})):
        report, _ = _compress(name, {**opts, "device": device}, base, tuned)
        results[f"{name}_synthetic_storage_ratio"] = report["storage_ratio"]
        results[f"{name}_synthetic_rel_error"] = report["rel_error"]
    source = getattr(args, "ere_source", None) or os.environ.get(SOURCE_ENV) or None
    results.update(real_storage_and_drop(Path(source) if source else None, device))
    return results


SOURCE_ENV = "SPARSE_FT_BENCH_ERE_SOURCE"
REAL_RANK, REAL_BITS = 8, 4
# the in-bench source: a tiny random-init BERT that learns synthetic_nli in two epochs
TINY_SOURCE = ["model=tiny_bert", "task=synthetic_nli", "method=dense", "trainer.epochs=2", "trainer.lr=2e-3",
               "trainer.warmup_ratio=0.1", "task.num_train=2000", "task.num_validation=256", "task.num_test=64",
               "trainer.batch_size=32", "seed=0"]
QUIET = ["energy=off", "trainer.progress=false"]


def _run_inprocess(run_dir: Path, overrides: list[str]) -> dict:
    """Compose like `python run.py <overrides>` and run the entry point here; returns summary.json."""
    from omegaconf import OmegaConf

    from ..jobs.entry import run
    from .harness import compose

    cfg = compose(overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(run_dir)
    run(cfg)
    return json.loads((run_dir / "summary.json").read_text())


def real_storage_and_drop(source: Path | None = None, device: str = "cpu") -> dict:
    """`ere_storage_ratio` and `ere_score_drop` of ERE (r = 8, b = 4) on a real fine-tune: `source`
    (a finished run dir) or, without one, a tiny BERT fine-tuned here on synthetic_nli."""
    with tempfile.TemporaryDirectory(prefix="bench_ere_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        if source is None:
            source = tmp / "source"
            _run_inprocess(source, TINY_SOURCE + QUIET + [f"trainer.device={device}"])
            origin = "random init (2 layers, hidden 32), fine-tuned in this run for 2 epochs"
        else:
            origin = f"run dir {source}"
        finetune_s = time.perf_counter() - start
        src = json.loads((Path(source) / "summary.json").read_text())
        start = time.perf_counter()
        _run_inprocess(tmp / "ere", ["job=compress", "method=ere", f"source={source}", f"method.rank_prior={REAL_RANK}",
                                     f"method.bits={REAL_BITS}", f"method.device={device}", *QUIET])
        compress_s = time.perf_counter() - start
        figures = ere_storage_and_drop(tmp / "ere")
        summary = json.loads((tmp / "ere" / "summary.json").read_text())
    model, task = src.get("model"), src.get("task")
    return {
        **figures,
        "ere_real_source": f"{model} on {task}: {origin}; ERE r={REAL_RANK}, b={REAL_BITS}",
        "ere_real_source_main": (src.get("metrics") or {}).get("main"),
        "ere_real_compressed_main": (summary.get("metrics") or {}).get("main"),
        "ere_real_rel_error": (summary.get("method_report") or {}).get("rel_error"),
        "ere_real_finetune_seconds": finetune_s,
        "ere_real_compress_job_seconds": compress_s,
    }


def ere_storage_and_drop(run_dir: Path) -> dict:
    """`ere_storage_ratio` and `ere_score_drop` of a finished `job=compress method=ere` run (its
    summary.json): the artifact's bytes over the dense fp32 checkpoint, and the source run's main
    score minus the reconstruction's. The lead's fine-tuning benchmark calls this after running
    `python run.py job=compress method=ere source=<a full fine-tune>`."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    if summary.get("status") != "completed":
        raise ValueError(f"{run_dir}: status {summary.get('status')!r}, not completed")
    storage = summary.get("storage") or {}
    dense = storage.get("dense_fp32_bytes")
    artifacts = storage.get("artifacts") or {}
    report = summary.get("method_report") or {}
    name = report.get("artifact", "ere.safetensors")
    size = (artifacts.get(name) or {}).get("bytes")
    return {
        "ere_storage_ratio": size / dense if size is not None and dense else report.get("storage_ratio"),
        "ere_score_drop": (summary.get("source") or {}).get("score_drop"),
    }
