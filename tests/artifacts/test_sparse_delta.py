"""The sparse-delta codec (artifacts/sparse_delta.py), the one writer/reader of the format that
masked/delta.py, apply_delta and sparse checkpointing share: a written delta applied to the tensors
it was taken against rebuilds the new tensors bit for bit, and "changed" means changed bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_ft.artifacts import sparse_delta as codec


def _bits(t: torch.Tensor) -> np.ndarray:  # the test's own view of a float32 tensor's bit patterns
    return t.detach().contiguous().numpy().view(np.uint32)


def test_changed_means_changed_bits():
    before = torch.tensor([0.0, 1.0, float("nan"), 2.0, -3.5])
    now = before.clone()
    now[0] = -0.0  # equal as numbers, other bits
    now[2] = torch.tensor(np.array([0x7FC00001], dtype=np.uint32).view(np.float32))  # another NaN payload
    now[4] = 7.0
    expected = np.flatnonzero(_bits(now) != _bits(before))
    assert expected.tolist() == [0, 2, 4]
    assert codec.changed_indices(now, before).tolist() == expected.tolist()
    assert codec.bits_differ(now, before).tolist() == [True, False, True, False, True]


def test_a_written_delta_applied_to_its_base_rebuilds_the_tensors_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(4, 5, generator=g), "b": torch.zeros(5), "bn.running_mean": torch.randn(5, generator=g)}
    new = {k: v.clone() for k, v in base.items()}
    new["w"][1, 2], new["w"][3, 0] = 9.0, 0.5
    new["b"][4] = -0.0  # bits only
    head = torch.randn(2, 5, generator=g)  # a tensor stored whole
    new["bn.running_mean"] += 1.0

    sparse = {}
    for name in ("w", "b"):
        idx = codec.changed_indices(new[name], base[name])
        sparse[name] = (idx, new[name].reshape(-1)[idx])
    assert sparse["w"][0].tolist() == [7, 15] and sparse["b"][0].tolist() == [4]
    size = codec.write(tmp_path / "d.safetensors", codec.encode(sparse, {"head": head}, {"bn.running_mean": new["bn.running_mean"]}),
                       {"format": "test"})
    assert size == (tmp_path / "d.safetensors").stat().st_size
    tensors, meta = codec.read(tmp_path / "d.safetensors")
    assert meta == {"format": "test"}
    assert tensors["w::idx"].dtype == torch.int32 and set(tensors) == {"w::idx", "w::val", "b::idx", "b::val", "head::full",
                                                                       "bn.running_mean::buffer"}

    params = {"w": base["w"].clone(), "b": base["b"].clone(), "head": torch.zeros(2, 5)}
    buffers = {"bn.running_mean": base["bn.running_mean"].clone()}
    codec.apply(tensors, params, buffers)
    for name in ("w", "b"):
        assert (_bits(params[name]) == _bits(new[name])).all(), name
    assert (_bits(params["head"]) == _bits(head)).all()
    assert (_bits(buffers["bn.running_mean"]) == _bits(new["bn.running_mean"])).all()


def test_an_entry_of_no_known_kind_is_refused():
    with pytest.raises(codec.DeltaError, match="unknown entry 'w::scale'"):
        codec.apply({"w::scale": torch.ones(1)}, {"w": torch.zeros(1)})
