"""One event list for methods and callbacks (issue 22, item 2): the trainer fires `Event`s and
knows no method and no callback by name; a user's callback (`trainer.callbacks`) receives every
event; the built-in callbacks are chosen by config; every hook is declared (no `hasattr`)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import run_inprocess
from sparse_ft.core.events import Event, EventHandler
from sparse_ft.train.callbacks import CallbackSetup, TrainerCallback


class Recorder(TrainerCallback):
    """Records every event it receives (a class attribute: Hydra builds the instance in the job)."""

    seen: list[str] = []

    def run_event(self, event, trainer, *args):
        Recorder.seen.append(event.name)
        super().run_event(event, trainer, *args)


def test_the_trainer_source_names_no_callback_no_method_and_finds_no_hook_by_hasattr():
    import sparse_ft.train.trainer as trainer_module
    from sparse_ft.methods.registry import registered
    from sparse_ft.train.callbacks import builtin, registry

    source = Path(trainer_module.__file__).read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):  # what runs: docstrings (prose about the loop) and comments go
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            node.body = body[1:] or [ast.Pass()]
    code = ast.unparse(tree)
    assert "hasattr(" not in source and "getattr(" not in code
    callback_classes = {c.__name__ for c in (*vars(builtin).values(), *vars(registry).values())
                        if inspect.isclass(c) and issubclass(c, TrainerCallback) and c is not TrainerCallback}
    assert {"NanCheck", "PeriodicCheckpoint", "BestCheckpoint", "EarlyStopping", "LocalSGDCallback", "SparseCheckpointer"} <= callback_classes
    spec_names = {spec.name for spec in registry.REGISTRY} - {registry.USER}
    methods = {name: cls for name, cls in registered().items() if cls.__module__.startswith("sparse_ft.")}  # not the tests' toys
    assert {"fish", "lora", "movement", "dense"} <= set(methods)
    method_words = set(methods) | {cls.__name__ for cls in methods.values()}
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", code))
    assert not words & callback_classes, words & callback_classes
    assert not words & spec_names, words & spec_names
    assert not words & method_words, words & method_words


@pytest.mark.slow  # a real (tiny) training run: 20 s on the shared 2-core machine
def test_a_user_callback_receives_every_event(tmp_path):
    Recorder.seen = []
    target = f"{__name__}.Recorder"
    s = run_inprocess(tmp_path / "run", ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=32", "task.max_eval_samples=16",
                                         "trainer.batch_size=16", "trainer.epochs=2", "trainer.lr=1e-3", "method=random_mask",
                                         "method.density=0.02", "method.mask_refresh_epochs=1", "trainer.checkpoint_every=1",
                                         "trainer.select_best=false",  # select_best refuses a mask refresh mid-stage (best.py: frozen tensors written after the best was kept)
                                         f"trainer.callbacks=[{{_target_:{target}}}]"])
    assert s["status"] == "completed", s.get("error")
    assert set(Recorder.seen) == {e.name for e in Event}, {e.name for e in Event} - set(Recorder.seen)
    assert Recorder.seen[0] == "FIT_START" and Recorder.seen[-1] == "FIT_END"
    # 4 optimizer steps: each after_backward → after_step → step_end → step_recorded, in that order
    steps = [e for e in Recorder.seen if e in ("AFTER_BACKWARD", "AFTER_STEP", "STEP_END", "STEP_RECORDED")]
    assert steps == ["AFTER_BACKWARD", "AFTER_STEP", "STEP_END", "STEP_RECORDED"] * 4
    assert Recorder.seen.count("EPOCH_END") == 2 and Recorder.seen.count("AFTER_REFRESH") == 1  # refreshed after epoch 1, not after the last


def test_every_event_has_a_declared_handler_method():
    for event in Event:
        assert callable(getattr(EventHandler, event.value)), event
    from sparse_ft.methods.base import Method

    assert issubclass(Method, EventHandler) and issubclass(TrainerCallback, EventHandler)


def test_the_built_in_callbacks_are_chosen_by_config(tmp_path):
    from sparse_ft.train.callbacks.registry import build_callbacks

    def names(trainer: dict, distributed: dict | None = None) -> list[str]:
        setup = CallbackSetup(trainer_cfg=OmegaConf.create(trainer), distributed_cfg=OmegaConf.create(distributed) if distributed else None,
                              checkpoint_dir=tmp_path / "checkpoints")
        return [type(cb).__name__ for cb in build_callbacks(setup)]

    base = {"select_best": False, "checkpoint_every": 0, "early_stopping_patience": 0}
    assert names(base) == ["NanCheck", "EarlyStopping"]
    assert names({**base, "select_best": True, "checkpoint_every": 5}) == ["NanCheck", "PeriodicCheckpoint", "BestCheckpoint", "EarlyStopping"]
    user = {**base, "callbacks": [{"_target_": f"{__name__}.Recorder"}]}
    assert names(user) == ["Recorder", "NanCheck", "EarlyStopping"]
