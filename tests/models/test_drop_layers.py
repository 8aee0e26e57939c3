"""`model.drop_last_layers` (READ-large: the last 4 encoder and decoder layers of T5-large dropped)."""

from __future__ import annotations

import pytest
from sparse_ft.config.validation import validate
from sparse_ft.core.errors import ConfigError
from sparse_ft.models import build_model
from sparse_ft.tasks import load_task

from conftest import compose


def _cfg(*overrides):
    return compose(["task=synthetic_nli", "task.max_train_samples=8", "task.max_eval_samples=8", *overrides])


@pytest.mark.parametrize("model,stacks", [("tiny_t5", ("encoder.block", "decoder.block")), ("tiny_bert", ("bert.encoder.layer",)),
                                          ("tiny_opt", None)])
def test_the_last_blocks_are_dropped_from_every_stack(model, stacks):
    full = _cfg(f"model={model}")
    cut = _cfg(f"model={model}", "model.drop_last_layers=1")
    validate(cut)
    task = load_task(full.task, 0)
    a, b = build_model(full.model, task).module, build_model(cut.model, task).module
    assert sum(p.numel() for p in b.parameters()) < sum(p.numel() for p in a.parameters())
    for path in stacks or ():
        get = lambda m: eval("m." + path)  # noqa: E731
        assert len(get(b)) == len(get(a)) - 1
    # the config says the new depth, and the kept blocks are the first ones
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sb) < set(sa)


def test_bad_values_name_the_key():
    for bad in ("-1", "1.5", "true"):
        with pytest.raises(ConfigError, match="model.drop_last_layers"):
            validate(_cfg("model=tiny_bert", f"model.drop_last_layers={bad}"))
    cfg = _cfg("model=tiny_bert", "model.drop_last_layers=2")  # tiny_bert has 2 layers
    with pytest.raises(ConfigError, match="model.drop_last_layers"):
        build_model(cfg.model, load_task(cfg.task, 0))
