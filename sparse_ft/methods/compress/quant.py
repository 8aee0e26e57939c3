"""Round-to-nearest quantisation with one (offset, step) pair per row or column, and tight bit packing.

Used by ERE (the columns of U and V, papers/ere.txt §4.2) and by BITQ (every residual entry).
The grid of slice j is `lo_j + step_j · {0, 1, …, 2^b − 1}` (min–max, asymmetric: all 2^b levels
are used, which matters at b = 2). `lo` and `step` are stored in fp16; they are rounded *before*
the codes are computed, and nudged so that the grid still covers [min_j, max_j], so the round-trip
error of every entry is at most step_j / 2 — the bound the tests check. A value that fp16 cannot
hold (|x| > 65504) makes that tensor's side parameters fp32 instead.

Codes of b bits are packed tightly, little-endian within each byte: n codes take ceil(n·b/8)
bytes, so the artifact's size on disk reflects b bits per entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP16_MAX = 65504.0


@dataclass
class Quantized:
    codes: torch.Tensor  # uint8, same shape as the input, values in [0, 2^bits − 1]
    lo: torch.Tensor  # (slices,) fp16 (fp32 where fp16 overflows): the grid's first level
    step: torch.Tensor  # (slices,) same dtype as lo: the grid's spacing
    bits: int
    axis: int  # the dimension whose index selects the (lo, step) pair


def levels(bits: int) -> int:
    """Largest code at `bits` bits."""
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return (1 << int(bits)) - 1


def side_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp16 unless a value would overflow it."""
    big = max((float(t.abs().max()) if t.numel() else 0.0) for t in tensors)
    return torch.float16 if big < FP16_MAX * 0.99 else torch.float32


def _grid(lo: torch.Tensor, hi: torch.Tensor, top: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, step) rounded to `dtype` such that lo_s ≤ lo and lo_s + top·step_s ≥ hi."""
    lo_s = lo.to(dtype)
    down = torch.full_like(lo_s, float("-inf"))
    for _ in range(4):  # one nudge is enough in practice; the loop is a guard
        bad = lo_s.float() > lo
        if not bool(bad.any()):
            break
        lo_s = torch.where(bad, torch.nextafter(lo_s, down), lo_s)
    need = (hi - lo_s.float()).clamp_min(0) / top
    step_s = need.to(dtype)
    up = torch.full_like(step_s, float("inf"))
    for _ in range(64):
        bad = (lo_s.float() + top * step_s.float() < hi) | (step_s.float() <= 0)
        if not bool(bad.any()):
            break
        step_s = torch.where(bad, torch.nextafter(step_s, up), step_s)
    return lo_s, step_s


def quantize(x: torch.Tensor, bits: int, axis: int = 1) -> Quantized:
    """Round-to-nearest at `bits` bits with one grid per index of `axis` (axis=1: per column of a
    matrix, axis=0: per row). `x` must be 2-D."""
    if x.ndim != 2:
        raise ValueError(f"quantize expects a matrix, got shape {tuple(x.shape)}")
    top = levels(bits)
    xf = x.detach().float()
    reduce = 1 - axis
    lo = xf.amin(dim=reduce) if xf.numel() else torch.zeros(x.shape[axis])
    hi = xf.amax(dim=reduce) if xf.numel() else torch.zeros(x.shape[axis])
    dtype = side_dtype(lo, hi)
    lo_s, step_s = _grid(lo, hi, top, dtype)
    shape = (1, -1) if axis == 1 else (-1, 1)
    lo_b, step_b = lo_s.float().view(shape), step_s.float().view(shape)
    codes = torch.round((xf - lo_b) / step_b).clamp_(0, top).to(torch.uint8)
    return Quantized(codes, lo_s, step_s, int(bits), axis)


def dequantize(codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """The fp32 values `lo + codes · step` (the inverse of `quantize` up to step/2)."""
    shape = (1, -1) if axis == 1 else (-1, 1)
    return lo.float().view(shape) + codes.float() * step.float().view(shape)


# --- bit packing -----------------------------------------------------------------------------------


def packed_nbytes(count: int, bits: int) -> int:
    return (int(count) * int(bits) + 7) // 8


_CHUNK = 1 << 22  # codes per packing chunk (a multiple of 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """`codes` (uint8, any shape, each < 2^bits) → a flat uint8 tensor of ceil(n·bits/8) bytes:
    code i occupies bits [i·b, (i+1)·b) of the stream, least significant bit first. Eight codes
    (8·b bits = b bytes) are combined in one int64 word at a time."""
    bits = int(bits)
    levels(bits)
    flat = codes.reshape(-1).to(torch.uint8)
    count = flat.numel()
    if bits == 8:
        return flat.clone()
    if count and int(flat.max()) >> bits:
        raise ValueError(f"a code does not fit in {bits} bits")
    code_shift = torch.arange(8, dtype=torch.int64) * bits
    byte_shift = torch.arange(bits, dtype=torch.int64) * 8
    out = []
    for start in range(0, count, _CHUNK):
        chunk = flat[start:start + _CHUNK].to(torch.int64)
        pad = (-chunk.numel()) % 8
        if pad:
            chunk = torch.cat([chunk, chunk.new_zeros(pad)])
        word = (chunk.view(-1, 8) << code_shift).sum(dim=1)  # disjoint bit ranges: sum == or
        out.append(((word.unsqueeze(1) >> byte_shift) & 0xFF).to(torch.uint8).reshape(-1))
    packed = torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)
    return packed[: packed_nbytes(count, bits)]


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The `count` codes of a `pack_bits` output, as a flat uint8 tensor."""
    bits, count = int(bits), int(count)
    levels(bits)
    packed = packed.reshape(-1).to(torch.uint8)
    if packed.numel() != packed_nbytes(count, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold exactly {count} codes of {bits} bits")
    if bits == 8:
        return packed.clone()
    code_shift = torch.arange(8, dtype=torch.int64) * bits
    byte_shift = torch.arange(bits, dtype=torch.int64) * 8
    mask = (1 << bits) - 1
    chunk_bytes = _CHUNK // 8 * bits
    out = []
    for start in range(0, packed.numel(), chunk_bytes):
        chunk = packed[start:start + chunk_bytes].to(torch.int64)
        pad = (-chunk.numel()) % bits
        if pad:
            chunk = torch.cat([chunk, chunk.new_zeros(pad)])
        word = (chunk.view(-1, bits) << byte_shift).sum(dim=1)
        out.append(((word.unsqueeze(1) >> code_shift) & mask).to(torch.uint8).reshape(-1))
    codes = torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)
    return codes[:count]
