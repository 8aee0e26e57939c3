"""ERE and its baselines (BITQ, LRA): the maths on synthetic spectra and matrices, the options'
bad values, compress() on tiny state dicts, the artifact's bytes on disk, and decompression
(Python API and CLI) giving the same weights as compress() returned. All tiny and CPU-only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from sparse_ft.core.errors import ConfigError
from sparse_ft.methods import build_method
from sparse_ft.methods.compress.artifact import read_artifact
from sparse_ft.methods.compress.bitq import BITQOptions
from sparse_ft.methods.compress.ere import EREOptions
from sparse_ft.methods.compress.lowrank import (allocate_ranks, choose_svd, squared_error, stiefel_project,
                                                truncated_svd)
from sparse_ft.methods.compress.lra import LRAOptions
from sparse_ft.methods.compress.quant import dequantize, pack_bits, packed_nbytes, quantize, unpack_bits

REPO = Path(__file__).resolve().parents[3]


# --- rank allocation ------------------------------------------------------------------------------


def _spectrum(k: int, tau: float, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.exp(-torch.arange(k, dtype=torch.float64) / tau)


def test_allocator_never_exceeds_the_budget():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        layers = int(torch.randint(1, 9, (1,), generator=g))
        spectra, costs, dims = [], [], []
        for _ in range(layers):
            n, m = (int(x) for x in torch.randint(1, 40, (2,), generator=g))
            k = min(n, m)
            s = torch.rand(k, generator=g, dtype=torch.float64).sort(descending=True).values * float(torch.rand(1, generator=g) * 10)
            if trial % 5 == 0:
                s[k // 2:] = 0  # exactly low rank
            spectra.append(s)
            costs.append(float(n + m) if trial % 2 else (n + m) * 0.5 + 10)  # numbers, or bytes with side values
            dims.append(k)
        full = sum(c * k for c, k in zip(costs, dims))
        for frac in (0.0, 0.01, 0.1, 0.33, 0.5, 0.9, 1.0, 1.5):
            budget = frac * full
            for alpha in (0.0, 0.5, 1.0):
                a = allocate_ranks(spectra, budget, alpha, costs)
                assert all(0 <= r <= k for r, k in zip(a.ranks, dims))
                used = sum(r * c for r, c in zip(a.ranks, costs))
                assert used <= budget + 1e-9, (trial, frac, alpha)
                assert math.isclose(used, a.used, rel_tol=1e-9, abs_tol=1e-9)


def test_allocator_beats_uniform_ranks_on_layers_that_decay_differently():
    # four 64x64 layers: fast, slow, very slow and flat-but-weak spectra
    spectra = [_spectrum(64, 2.0, 3.0), _spectrum(64, 12.0), _spectrum(64, 60.0, 0.8), _spectrum(64, 1e4, 0.05)]
    costs = [128.0] * 4
    for r in (2, 4, 8, 16):
        uniform = squared_error(spectra, [r] * 4)
        for alpha in (0.0, 0.5):
            a = allocate_ranks(spectra, r * sum(costs), alpha, costs)
            assert a.used <= r * sum(costs)
            assert squared_error(spectra, a.ranks) < uniform, (r, alpha, a.ranks)
        # alpha = 1 is the rank prior alone: uniform ranks
        assert allocate_ranks(spectra, r * sum(costs), 1.0, costs).ranks == [r] * 4


def test_allocation_from_leading_singular_values_matches_the_full_spectrum():
    """The randomized path only knows the leading values and ‖Δ‖²: same ranks as the full spectrum
    when both fit over the same range."""
    spectra = [_spectrum(96, 3.0, 2.0), _spectrum(64, 15.0), _spectrum(128, 40.0, 0.7)]
    costs = [192.0, 160.0, 256.0]
    probe = 24
    budget = 6 * sum(costs)
    full = allocate_ranks(spectra, budget, 0.5, costs, fit_upto=probe)
    part = allocate_ranks([s[:probe] for s in spectra], budget, 0.5, costs, fit_upto=probe,
                          totals=[float(s.pow(2).sum()) for s in spectra], dims=[s.numel() for s in spectra])
    assert max(full.ranks) <= probe
    assert part.ranks == full.ranks


# --- SVD, Stiefel, quantisation --------------------------------------------------------------------


def test_randomized_svd_is_as_good_as_exact_far_below_full_rank():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(160, 6, generator=g) * torch.tensor([5.0, 4, 3, 2, 1, 0.5])) @ torch.randn(6, 120, generator=g)
    x += 0.01 * torch.randn(160, 120, generator=g)
    assert choose_svd(5, 160, 120, "auto", 8) == "randomized" and choose_svd(60, 160, 120, "auto", 8) == "exact"
    errs = {}
    for mode in ("exact", "randomized"):
        u, s, v, how = truncated_svd(x, 5, mode)
        assert how == mode and u.shape == (160, 5) and v.shape == (120, 5)
        errs[mode] = float((x - (u * s) @ v.T).pow(2).sum())
    assert errs["randomized"] <= errs["exact"] * 1.01


def test_stiefel_projection_gives_orthonormal_columns():
    g = torch.Generator().manual_seed(2)
    for n, r in ((50, 1), (50, 7), (384, 16), (9, 9)):
        q, _ = torch.linalg.qr(torch.randn(n, r, generator=g))
        noisy = dequantize(*_q(q, 3))  # what ERE projects: a dequantised orthonormal matrix
        p = stiefel_project(noisy)
        assert torch.allclose(p.T @ p, torch.eye(r), atol=1e-5)
        assert torch.allclose(stiefel_project(q), q, atol=1e-5)  # already on the manifold: unchanged
        assert (p - q).norm() <= (noisy - q).norm() + 1e-6  # closer to the original than the dequantised one


def _q(x, bits, axis=1):
    q = quantize(x, bits, axis)
    return q.codes, q.lo, q.step, axis


def test_quantize_round_trip_error_is_at_most_half_a_step():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 12, generator=g) * torch.logspace(-6, 3, 12)  # columns from 1e-6 to 1e3
    x[:, 3] = 0.25  # a constant column
    for bits in (2, 4, 8):
        for axis in (0, 1):
            q = quantize(x, bits, axis)
            assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2**bits - 1
            assert q.lo.dtype == torch.float16
            err = (dequantize(q.codes, q.lo, q.step, axis) - x).abs()
            step = q.step.float().view((1, -1) if axis == 1 else (-1, 1))
            magnitude = x.abs().amax(dim=1 - axis, keepdim=True)  # fp32 arithmetic adds ~1e-7 of it
            assert bool((err <= step / 2 + 1e-6 * magnitude).all()), (bits, axis)
    # at 8 bits the step is range/255 (up to fp16 rounding of the step)
    q = quantize(x, 8, 1)
    rng = x.amax(0) - x.amin(0)
    assert bool((q.step.float() <= rng / 255 * 1.002 + 1e-7).all())


def test_bit_packing_is_exact_and_tight():
    g = torch.Generator().manual_seed(4)
    for bits in range(2, 9):
        for n in (0, 1, 7, 8, 9, 1001):
            codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.uint8)
            packed = pack_bits(codes, bits)
            assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits) == math.ceil(n * bits / 8)
            assert torch.equal(unpack_bits(packed, bits, n), codes)
    # little-endian within a byte: codes 1, 2 at 4 bits -> 0x21; 3, 0, 0, 1 at 2 bits -> 0b01000011
    assert pack_bits(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist() == [0x21]
    assert pack_bits(torch.tensor([3, 0, 0, 1], dtype=torch.uint8), 2).tolist() == [0b01000011]
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([4], dtype=torch.uint8), 2)


# --- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,values,key", [
    (EREOptions, {"bits": 1}, "bits"),
    (EREOptions, {"bits": 9}, "bits"),
    (EREOptions, {"rank_prior": -4}, "rank_prior"),
    (EREOptions, {"rank_prior": 8, "budget_fraction": 0.05}, "budget_fraction"),  # both
    (EREOptions, {"rank_prior": None}, "rank_prior"),  # neither
    (EREOptions, {"rank_prior": None, "budget_fraction": 0.0}, "budget_fraction"),
    (EREOptions, {"alpha": -0.1}, "alpha"),
    (EREOptions, {"alpha": 1.5}, "alpha"),
    (EREOptions, {"svd": "fast"}, "svd"),
    (EREOptions, {"ranks": 8}, "ranks"),  # misspelt
    (BITQOptions, {"bits": 9}, "bits"),
    (BITQOptions, {"axis": "diagonal"}, "axis"),
    (LRAOptions, {"rank": 0}, "rank"),
    (LRAOptions, {"dtype": "int8"}, "dtype"),
])
def test_bad_options_fail_naming_the_key(cls, values, key):
    name = {EREOptions: "ere", BITQOptions: "bitq", LRAOptions: "lra"}[cls]
    with pytest.raises(ConfigError, match=rf"^method\.{key}\b"):
        cls.parse(OmegaConf.create({"name": name, **values}))


def test_yaml_defaults_parse():
    from conftest import compose

    assert EREOptions.parse(compose(["method=ere"]).method).rank_prior == 256
    assert EREOptions.parse(OmegaConf.create({"name": "ere", "rank_prior": None, "budget_fraction": 0.05})).budget_fraction == 0.05
    assert BITQOptions.parse(compose(["method=bitq"]).method).bits == 4
    assert LRAOptions.parse(compose(["method=lra"]).method).rank == 256


# --- compress() and the artifact -------------------------------------------------------------------


def tiny_pair(seed: int = 0):
    """A tiny 'model': two matrices with low-rank residuals, a conv kernel, a changed bias, an
    unchanged LayerNorm, an integer buffer, tied embeddings, a half-precision matrix and a new head."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(20, 16, generator=g)
    base = {
        "emb.weight": emb, "lm_head.weight": emb.clone(),
        "q.weight": torch.randn(16, 16, generator=g), "ffn.weight": torch.randn(40, 16, generator=g),
        "q.bias": torch.randn(16, generator=g), "ln.weight": torch.ones(16), "pos_ids": torch.arange(8),
        "conv.weight": torch.randn(6, 3, 3, 3, generator=g), "half.weight": torch.randn(12, 10, generator=g).half(),
    }
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["q.weight"] += 0.02 * torch.randn(16, 3, generator=g) @ torch.randn(3, 16, generator=g)
    tuned["ffn.weight"] += 0.02 * torch.randn(40, 5, generator=g) @ torch.randn(5, 16, generator=g) + 1e-4 * torch.randn(40, 16, generator=g)
    tuned["conv.weight"] += 0.01 * torch.randn(6, 3, 3, 3, generator=g)
    tuned["half.weight"] += (0.05 * torch.randn(12, 10, generator=g)).half()
    tuned["q.bias"] += 0.1
    tuned["emb.weight"] += 0.01 * torch.randn(20, 2, generator=g) @ torch.randn(2, 16, generator=g)
    tuned["lm_head.weight"] = tuned["emb.weight"].clone()  # tied: stored once
    tuned["classifier.weight"] = torch.randn(3, 16, generator=g)  # no pretrained counterpart
    tuned["classifier.bias"] = torch.zeros(3)
    return base, tuned


METHODS = [("ere", {"rank_prior": 4, "svd": "exact"}), ("ere", {"rank_prior": None, "budget_fraction": 0.7}),
           ("bitq", {"bits": 3}), ("lra", {"rank": 3})]


@pytest.mark.parametrize("name,opts", METHODS)
def test_compress_reconstructs_every_key_and_counts_bytes_on_disk(name, opts, tmp_path):
    base, tuned = tiny_pair()
    method = build_method(OmegaConf.create({"name": name, "device": "cpu", **opts}))
    result = method.compress(base, tuned, tmp_path)
    rec = result.reconstructed
    assert list(rec) == list(tuned)
    for k, t in tuned.items():
        assert rec[k].shape == t.shape and rec[k].dtype == t.dtype, k
    for k in ("classifier.weight", "classifier.bias", "q.bias"):  # stored as they are
        assert torch.equal(rec[k], tuned[k])
    for k in ("ln.weight", "pos_ids"):  # unchanged: not stored, taken from the base
        assert torch.equal(rec[k], base[k])
    assert torch.equal(rec["lm_head.weight"], rec["emb.weight"])
    (artifact,) = result.artifacts
    assert artifact == f"{name}.safetensors"
    assert result.artifacts[artifact] == os.path.getsize(tmp_path / artifact) == result.report["bytes"]["total"]
    tensors, meta = read_artifact(tmp_path / artifact)
    assert not any(k.startswith(("ln.weight", "pos_ids", "lm_head")) for k in tensors)  # unchanged and tied: not stored
    assert meta["entries"]["lm_head.weight"] == {"code": "alias", "of": "emb.weight"}
    assert set(result.report["layers"]) == {"q.weight", "ffn.weight", "conv.weight", "half.weight", "emb.weight"}
    assert result.report["rel_error"] < 1.0
    if opts.get("budget_fraction"):
        assert result.artifacts[artifact] <= opts["budget_fraction"] * result.report["dense_fp32_bytes"]


def test_ere_reconstruction_is_theta_plus_u_d_vt_of_the_stored_factors(tmp_path):
    base, tuned = tiny_pair()
    method = build_method(OmegaConf.create({"name": "ere", "rank_prior": 6, "bits": 8, "device": "cpu"}))
    result = method.compress(base, tuned, tmp_path)
    tensors, meta = read_artifact(tmp_path / "ere.safetensors")
    assert meta["method"] == "ere" and len(meta["base"]["sha256"]) == 64
    for key, e in meta["entries"].items():
        if e["code"] != "lowrank_q" or e["rank"] == 0:
            continue
        n, m = e["matrix"]
        r = e["rank"]
        assert e["bits"] == 8 and result.report["ranks"][key] == r
        side = tensors[f"{key}::side"]
        assert side.dtype == torch.float16 and side.shape == (5, r)
        assert tensors[f"{key}::codes"].numel() == math.ceil((n + m) * r * 8 / 8)
        codes = unpack_bits(tensors[f"{key}::codes"], 8, (n + m) * r)
        u = stiefel_project(dequantize(codes[: n * r].view(n, r), side[0], side[1]))
        v = stiefel_project(dequantize(codes[n * r:].view(m, r), side[2], side[3]))
        assert torch.allclose(u.T @ u, torch.eye(r), atol=1e-5) and torch.allclose(v.T @ v, torch.eye(r), atol=1e-5)
        want = base[key].float() + ((u * side[4].float()) @ v.T).reshape(base[key].shape)
        assert torch.allclose(result.reconstructed[key].float(), want, rtol=1e-3, atol=1e-3), key
    # q.weight's residual has rank 3 <= its allocated rank: at 8 bits it is nearly exact
    d = tuned["q.weight"] - base["q.weight"]
    assert result.report["ranks"]["q.weight"] >= 3
    assert (result.reconstructed["q.weight"] - tuned["q.weight"]).norm() / d.norm() < 0.05


def test_decompress_cli_writes_the_weights_compress_returned(tmp_path):
    base, tuned = tiny_pair()
    result = build_method(OmegaConf.create({"name": "ere", "rank_prior": 4, "device": "cpu"})).compress(base, tuned, tmp_path)
    save_file({k: v.clone() for k, v in base.items()}, str(tmp_path / "base.safetensors"))
    proc = subprocess.run([sys.executable, "-m", "sparse_ft.artifacts.ere", "decompress", str(tmp_path), str(tmp_path / "out"),
                           "--base", str(tmp_path / "base.safetensors")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(tuned)  # (safetensors stores keys in its own order)
    for k, t in result.reconstructed.items():
        assert written[k].dtype == t.dtype and torch.allclose(written[k], t, rtol=1e-6, atol=1e-7), k


@pytest.mark.parametrize("name,opts", METHODS[1:])
def test_decompress_api_matches_and_a_wrong_base_is_refused(name, opts, tmp_path):
    from sparse_ft.artifacts.ere import decompress, main

    base, tuned = tiny_pair()
    result = build_method(OmegaConf.create({"name": name, "device": "cpu", **opts})).compress(base, tuned, tmp_path)
    save_file({k: v.clone() for k, v in base.items()}, str(tmp_path / "base.safetensors"))
    weights = decompress(tmp_path / f"{name}.safetensors", tmp_path / "base.safetensors")
    for k, t in result.reconstructed.items():
        assert torch.equal(weights[k], t), k
    assert main(["decompress", str(tmp_path), str(tmp_path / "out"), "--base", str(tmp_path / "base.safetensors")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    other, _ = tiny_pair(seed=1)
    save_file({k: v.clone() for k, v in other.items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SystemExit, match="not the base"):
        decompress(tmp_path / f"{name}.safetensors", tmp_path / "other.safetensors")


def test_a_budget_too_small_for_the_raw_tensors_fails_naming_budget_fraction(tmp_path):
    base, tuned = tiny_pair()
    method = build_method(OmegaConf.create({"name": "ere", "rank_prior": None, "budget_fraction": 0.001, "device": "cpu"}))
    with pytest.raises(ConfigError, match=r"^method\.budget_fraction"):
        method.compress(base, tuned, tmp_path)


def test_rank_zero_is_the_no_residual_control(tmp_path):
    base, tuned = tiny_pair()
    result = build_method(OmegaConf.create({"name": "ere", "rank_prior": 0, "device": "cpu"})).compress(base, tuned, tmp_path)
    assert set(result.report["ranks"].values()) == {0}
    for k in ("q.weight", "ffn.weight", "conv.weight", "emb.weight"):  # every matrix residual dropped
        assert torch.equal(result.reconstructed[k], base[k]), k
    for k in ("classifier.weight", "q.bias"):  # the tensors stored as they are stay
        assert torch.equal(result.reconstructed[k], tuned[k]), k


def test_fewer_bits_and_lower_ranks_give_smaller_artifacts(tmp_path):
    base, tuned = tiny_pair()
    sizes = {}
    for bits, r in ((2, 2), (4, 2), (8, 2), (4, 6)):
        out = tmp_path / f"{bits}_{r}"
        res = build_method(OmegaConf.create({"name": "ere", "rank_prior": r, "bits": bits, "device": "cpu"})).compress(base, tuned, out)
        sizes[bits, r] = res.report["bytes"]["coded"]
    assert sizes[2, 2] < sizes[4, 2] < sizes[8, 2] and sizes[4, 2] < sizes[4, 6]


def test_new_keys_are_stored_as_they_are_even_when_the_base_holds_them(tmp_path):
    from sparse_ft.methods.compress.artifact import read_artifact
    from sparse_ft.methods.compress.base import CompressContext

    base, tuned = tiny_pair()
    base["classifier.weight"] = torch.zeros(3, 16)  # the job's base holds the head at its seeded init
    method = build_method(OmegaConf.create({"name": "ere", "rank_prior": 4, "device": "cpu"}))
    context = CompressContext(new_keys=frozenset({"classifier.weight"}), base_identity={"model": "tiny", "seed": 3})
    result = method.compress(base, tuned, tmp_path, context)  # handed in: nothing is set on the method
    assert result.report["raw_keys"]["classifier.weight"] == "no pretrained counterpart"
    assert torch.equal(result.reconstructed["classifier.weight"], tuned["classifier.weight"])
    _, meta = read_artifact(tmp_path / "ere.safetensors")
    assert meta["base"]["identity"] == {"model": "tiny", "seed": 3}
    assert meta["entries"]["classifier.weight"]["code"] == "raw"
    (tmp_path / "again").mkdir()
    again = method.compress(base, tuned, tmp_path / "again")  # the method kept nothing of the last call
    assert "classifier.weight" not in again.report["raw_keys"]


def test_budget_fraction_trims_ranks_when_the_written_file_is_over_the_cap(tmp_path, caplog):
    """The header's size is only estimated before writing: when the file comes out over the cap,
    ranks are dropped (least σ² per byte first) and the file is rewritten."""
    base, tuned = tiny_pair()
    method = build_method(OmegaConf.create({"name": "ere", "rank_prior": None, "budget_fraction": 0.8, "device": "cpu"}))
    full = method.budget_bytes
    cap = {}

    def tighter(ctx):  # the allocation plans for the full budget, the file must fit 1000 bytes less
        cap["bytes"] = full(ctx) - 1000
        return cap["bytes"]

    method.budget_bytes = tighter
    with caplog.at_level("INFO", logger="sparse_ft.methods.compress.residual"):
        result = method.compress(base, tuned, tmp_path)
    assert "trimming" in caplog.text
    size = os.path.getsize(tmp_path / "ere.safetensors")
    assert size == result.artifacts["ere.safetensors"] <= cap["bytes"]
    assert sum(result.report["ranks"].values()) < sum(method._alloc.ranks)
    tensors, meta = read_artifact(tmp_path / "ere.safetensors")
    assert {k: e["rank"] for k, e in meta["entries"].items() if e["code"] == "lowrank_q"} == result.report["ranks"]
    from sparse_ft.artifacts.ere import decompress

    save_file({k: v.clone() for k, v in base.items()}, str(tmp_path / "base.safetensors"))
    weights = decompress(tmp_path / "ere.safetensors", tmp_path / "base.safetensors")
    assert all(torch.equal(weights[k], t) for k, t in result.reconstructed.items())


def test_bench_storage_and_drop_read_the_compress_runs_summary(tmp_path):
    from sparse_ft.bench.ere import ere_storage_and_drop

    summary = {"status": "completed", "job": "compress", "method": "ere",
               "source": {"path": "/x", "main": 0.80, "score_drop": 0.012},
               "storage": {"dense_fp32_bytes": 1000, "artifacts": {"ere.safetensors": {"bytes": 50, "ratio_to_dense_fp32": 0.05}}},
               "method_report": {"artifact": "ere.safetensors", "storage_ratio": 0.05}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert ere_storage_and_drop(tmp_path) == {"ere_storage_ratio": 0.05, "ere_score_drop": 0.012}
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    with pytest.raises(ValueError, match="not completed"):
        ere_storage_and_drop(tmp_path)
