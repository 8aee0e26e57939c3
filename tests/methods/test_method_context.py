"""The context a method receives is frozen and typed: no untyped `extra` dict, nothing re-bound
after hand-out (the job hands `prepare` and every `begin_stage` a new context instead)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest
import torch

from conftest import run_inprocess
from sparse_ft.methods.base import Method, MethodContext, Stage, Staged
from sparse_ft.methods.registry import register

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16",
        "trainer.batch_size=8", "trainer.lr=1e-3"]


def test_method_context_is_frozen_and_has_no_extra_dict():
    ctx = MethodContext(run_dir=None, device=torch.device("cpu"), seed=0, train_features=[], collate=None, loss=None)
    names = {f.name for f in dataclasses.fields(MethodContext)}
    assert "extra" not in names
    assert {"world_size", "local_sgd", "defer_mask"} <= names  # what `extra` carried, typed
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.total_steps = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.bundle = object()
    with pytest.raises(TypeError):
        MethodContext(run_dir=None, device=torch.device("cpu"), seed=0, train_features=[], collate=None, loss=None, extra={})
    assert (ctx.world_size, ctx.local_sgd, ctx.defer_mask) == (1, False, False)


SEEN: list[tuple] = []


@register("toy_context_probe")
class ContextProbe(Staged, Method):
    """Two stages (the second with its own max_steps); records the contexts it is handed."""

    name = "toy_context_probe"

    def stages(self):
        return [Stage("first"), Stage("second", {"max_steps": 2})]

    def wrap(self, bundle, ctx):
        self.built = bundle
        self.wrapped = replace(bundle)  # another bundle object, as a method that wraps the model hands back
        SEEN.append(("wrap", ctx, ctx.bundle, ctx.total_steps))
        return self.wrapped

    def prepare(self, module, ctx, resumed=None):
        super().prepare(module, ctx, resumed)
        SEEN.append(("prepare", ctx, ctx.bundle, ctx.total_steps))

    def begin_stage(self, index, stage, ctx):
        SEEN.append(("stage", ctx, ctx.bundle, ctx.total_steps))


def test_the_job_hands_prepare_and_each_stage_a_new_context_and_rebinds_none(tmp_path):
    SEEN.clear()
    s = run_inprocess(tmp_path, [*TINY, "method.name=toy_context_probe", "trainer.max_steps=3"])
    assert s["status"] == "completed", s.get("error")
    kinds = [k for k, *_ in SEEN]
    assert kinds == ["wrap", "prepare", "stage", "stage"]
    (_, wrap_ctx, wrap_bundle, wrap_total), (_, prep_ctx, prep_bundle, prep_total), (_, s0, _, s0_total), (_, s1, s1_bundle, s1_total) = SEEN
    # every hand-out is its own object, and each still holds what it held when handed out
    assert len({id(wrap_ctx), id(prep_ctx), id(s0), id(s1)}) == 4
    assert wrap_ctx.bundle is wrap_bundle and prep_ctx.bundle is prep_bundle
    assert wrap_bundle is not prep_bundle and prep_bundle is s1_bundle  # wrap sees the built bundle; prepare and the stages the wrapped one
    assert prep_ctx.loss.__self__ is prep_bundle and wrap_ctx.loss.__self__ is wrap_bundle
    assert (wrap_total, prep_total, s0_total, s1_total) == (3, 3, 3, 2)  # the second stage's own max_steps
    assert (wrap_ctx.total_steps, prep_ctx.total_steps, s0.total_steps, s1.total_steps) == (3, 3, 3, 2)  # nothing re-bound later
