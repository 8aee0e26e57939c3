"""The contract every registered method keeps, checked over the registry (a new method gets these
for free): bad values are rejected naming the key; a tiny run completes; what the method did not
train stays bit-identical; its state round-trips through a resume bit for bit; the `params` and
`storage` blocks agree with the exported weights on disk."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import compose, run_inprocess
from sparse_ft.core.errors import ConfigError
from sparse_ft.methods.registry import registered

def shipped() -> dict:
    """The registered methods, less the toy ones other test modules register."""
    return {n: c for n, c in registered().items() if not n.startswith("toy_")}


TRAINING = sorted(n for n, c in shipped().items() if getattr(c, "kind", "trainer") == "trainer")
TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16",
        "trainer.batch_size=8", "trainer.lr=1e-3", "method.name={m}"]
# options the tiny run sets so that it is quick (FISH's Fisher over 16 examples; Diff Pruning's second stage in steps)
QUICK_OPTIONS = {"fish": ["++method.num_samples=16"], "diff_pruning": ["++method.finetune_steps=4"]}


def method_overrides(name: str) -> list[str]:
    return [f"method={name}", *QUICK_OPTIONS.get(name, [])]


def test_every_method_in_conf_is_registered_and_vice_versa():
    conf = {p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "method").glob("*.yaml")}
    assert set(shipped()) <= conf, f"methods without conf/method/<name>.yaml: {set(shipped()) - conf}"
    for name in conf:
        assert compose([f"method={name}"]).method.name in registered()


def _bad_values(field: dataclasses.Field, annotation) -> list:
    meta = field.metadata
    bad = []
    if meta.get("low") is not None:
        bad.append(meta["low"] - 1 if not meta.get("low_open") else meta["low"])
    if meta.get("high") is not None:
        bad.append(meta["high"] + 1 if not meta.get("high_open") else meta["high"])
    args = typing.get_args(annotation)
    if meta.get("choices") or typing.get_origin(annotation) is typing.Literal or any(typing.get_origin(a) is typing.Literal for a in args):
        bad.append("no-such-choice")
    if annotation is bool:
        bad.append("yes")
    return bad


@pytest.mark.parametrize("name", sorted(shipped()))
def test_bad_values_are_rejected_naming_the_key(name):
    cls = registered()[name]
    base = OmegaConf.to_container(compose([f"method={name}"]).method)
    with pytest.raises(ConfigError, match=r"method\.no_such_key.*"):
        cls.validate(OmegaConf.create({**base, "no_such_key": 1}))
    hints = typing.get_type_hints(cls.Options)
    checked = 0
    for field in dataclasses.fields(cls.Options):
        for value in _bad_values(field, hints[field.name]):
            with pytest.raises(ConfigError, match=rf"method\.{field.name}\b"):
                cls.validate(OmegaConf.create({**base, field.name: value}))
            checked += 1
    assert checked or len(dataclasses.fields(cls.Options)) == 1, f"{name}: no option has a checked range"


@pytest.mark.parametrize("name", sorted(shipped()))
def test_every_option_has_help_and_the_yaml_sets_only_known_keys(name):
    cls = shipped()[name]
    rows = cls.Options.help()
    assert all(help_text for _, _, _, help_text in rows), f"{name}: options without help text"
    yaml_keys = set(compose([f"method={name}"]).method)
    assert yaml_keys <= {key for key, *_ in rows}


def test_methods_cli_prints_every_option_with_its_help(capsys):
    from sparse_ft.methods.__main__ import main

    assert main(["fish"]) == 0
    out = capsys.readouterr().out
    assert "method.density = 0.005" in out and "fraction of all parameters trained" in out
    assert main(["no_such_method"]) == 2


def test_a_key_of_another_method_is_ignored_so_sweeps_can_mix_methods(caplog):
    dense = registered()["dense"]
    opts = dense.parse_options(OmegaConf.create({"name": "dense", "num_samples": 64}))
    assert not hasattr(opts, "num_samples")
    with pytest.raises(ConfigError, match=r"method\.num_sample\b.*did you mean 'num_samples'"):
        registered()["fish"].validate(OmegaConf.create({"name": "fish", "num_sample": 64}))


def test_a_key_of_another_method_is_noted_once_per_job(tmp_path, caplog):
    """The note that a key belongs to another method is logged once per job, not once by the
    validation and again when the method is built (issue 19, item 14)."""
    import logging

    caplog.set_level(logging.INFO, logger="sparse_ft")
    s = run_inprocess(tmp_path, ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=16", "task.max_eval_samples=8",
                                 "trainer.batch_size=8", "trainer.max_steps=1", "method=dense", "+method.num_samples=64"])
    assert s["status"] == "completed", s.get("error")
    notes = [r.getMessage() for r in caplog.records if "ignored in this job" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("method.num_samples belongs to fish"), notes


def _base_module(run: Path) -> torch.nn.Module:
    """The model the run started from, rebuilt as the run built it."""
    from sparse_ft.jobs.entry import seed_everything
    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    cfg = OmegaConf.load(run / "config.yaml")
    seed_everything(cfg.seed)
    task = load_task(cfg.task, cfg.seed)
    return build_model(cfg.model, task, max_length=int(cfg.task.max_length)).module


@pytest.mark.parametrize("name", TRAINING)
def test_tiny_run_frozen_entries_and_accounting(name, tmp_path):
    s = run_inprocess(tmp_path, [*(o.format(m=name) for o in TINY), *method_overrides(name), "trainer.max_steps=4"])
    assert s["status"] == "completed", s.get("error")
    final = load_file(str(tmp_path / "checkpoints/final/model.safetensors"))
    module = _base_module(tmp_path)
    base = module.state_dict()
    assert set(final) == set(base), "the final checkpoint must be in the base model's layout"
    changed = sum(int((final[k].reshape(-1) != p.detach().reshape(-1)).sum()) for k, p in module.named_parameters())
    p = s["params"]
    assert p["updated"] == changed, "params.updated must be counted on the exported weights"
    assert p["total"] == sum(p.numel() for p in module.parameters())
    assert {"trainable", "added", "updated_fraction", "trainable_fraction"} <= set(p)
    # frozen stays frozen: nothing changes beyond what the method trains (or merges into)
    assert 0 < p["updated"] <= p["trainable"] + (s.get("method_report") or {}).get("merged_entries", 0)
    for rel, info in s["storage"]["artifacts"].items():
        path = tmp_path / rel
        if path.is_file():
            assert info["bytes"] == path.stat().st_size, rel
    assert s["storage"]["dense_fp32_bytes"] > 0


@pytest.mark.parametrize("name", TRAINING)
def test_state_round_trips_through_resume(name, tmp_path):
    """A 4-step run checkpoints at step 2 (checkpoints/last keeps step 2: the end is not a
    checkpoint); a second run resumes from that checkpoint and must end bit-identical."""
    args = [*(o.format(m=name) for o in TINY), *method_overrides(name), "trainer.max_steps=4", "trainer.checkpoint_every=2"]
    full = run_inprocess(tmp_path / "full", args)
    assert full["status"] == "completed", full.get("error")
    assert json.loads((tmp_path / "full/checkpoints/last/manifest.json").read_text())["step"] == 2
    resumed = run_inprocess(tmp_path / "resumed", [*args, f"trainer.resume={tmp_path / 'full'}"])
    assert resumed["resumed_from"]["step"] == 2
    a = load_file(str(tmp_path / "full/checkpoints/final/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: resumed weights differ"
    assert resumed["metrics"] == full["metrics"]
