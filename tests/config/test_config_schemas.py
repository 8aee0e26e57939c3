"""One typed schema per config group (sparse_ft/config/schemas.py): the YAML files follow it (keys,
values and the key comments written from its help), its allowed values are the ones the code
accepts, and validation, the listing and the "did you mean" errors come from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose
from sparse_ft.config import schemas
from sparse_ft.config.schemas import SCHEMAS, parse_groups
from sparse_ft.config.validation import ConfigError, command_line_key_error, validate
from sparse_ft.config.yaml_comments import comment_for, files, out_of_step, rewrite

GROUP_FILES = [(g, p.stem) for g in ("trainer", "task", "model", "energy", "logger", "distributed")
               for p in sorted((REPO / "conf" / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", GROUP_FILES, ids=[f"{g}={o}" for g, o in GROUP_FILES])
def test_every_option_file_of_every_group_parses_by_its_schema(group, option):
    overrides = [f"{group}={option}"]
    if group == "distributed" and option == "local_sgd":
        overrides.append("distributed.allow_single_worker=true")
    cfg = compose(overrides)
    parsed = parse_groups(cfg)[group]
    node = OmegaConf.to_container(cfg[group], resolve=True)
    for key, value in node.items():  # what the file sets is what the schema hands back
        got = getattr(parsed, key)
        assert (dataclasses.asdict(got) if dataclasses.is_dataclass(got) else got) == value, key


def test_every_schema_key_has_help_and_a_type():
    for group, schema in SCHEMAS.items():
        for key, kind, _, help_text in schema.help():
            assert help_text and kind, f"{group}.{key}"


def test_the_yaml_key_comments_are_the_schema_help():
    """Help is written once: every key comment of conf/ is what the schema (or the method's
    Options) says; `python -m sparse_ft.config --write-yaml-comments` rewrites them."""
    assert out_of_step() == []
    from sparse_ft.config.__main__ import main

    assert main(["--check-yaml-comments"]) == 0
    trainer = (REPO / "conf" / "trainer" / "default.yaml").read_text()
    assert f"lr: 5.0e-5                # {comment_for(schemas.TrainerSchema, 'lr')}\n" in trainer
    assert {p.parent.name for p, _ in files()} >= {"conf", "trainer", "task", "model", "energy", "logger", "distributed", "method"}


def test_the_comment_writer_rewrites_a_drifted_comment_and_keeps_values_and_free_form_blocks():
    text = ("# header\nname: x                   # stale words\narch: encoder\nconfig:                   # old\n"
            "  model_type: bert        # a free-form key, left alone\nrandom_init: true  # rnd\n")
    out = rewrite(text, schemas.ModelSchema)
    lines = out.splitlines()
    assert lines[0] == "# header"
    assert lines[1] == f"name: x                   # {comment_for(schemas.ModelSchema, 'name')}"
    assert lines[2].startswith("arch: encoder") and lines[2].endswith(comment_for(schemas.ModelSchema, "arch"))
    assert lines[4] == "  model_type: bert        # a free-form key, left alone"
    assert OmegaConf.create(out) == OmegaConf.create(text)  # values unchanged
    assert rewrite(out, schemas.ModelSchema) == out  # idempotent
    with pytest.raises(ValueError, match="'nmae' is not a key of ModelSchema"):
        rewrite("nmae: x\n", schemas.ModelSchema, "conf/model/x.yaml")
    nested = rewrite("generation:\n  num_beams: 4  # x\n", schemas.TaskSchema)
    assert f"# {comment_for(schemas.GenerationSchema, 'num_beams')}" in nested


def test_allowed_values_come_with_the_comment_when_the_help_does_not_list_them():
    from sparse_ft.methods.registry import registered

    adapter = registered()["adapter"].Options
    assert comment_for(adapter, "activation") == "non-linearity inside the bottleneck (relu | gelu | tanh | swish)"
    assert comment_for(schemas.TrainerSchema, "optimizer") == "adamw | sgd"  # the help lists them itself
    assert comment_for(schemas.TrainerSchema, "predict").startswith("null | test")


def test_schema_allowed_values_are_the_ones_the_code_accepts():
    import typing

    from sparse_ft.loggers import LOGGERS
    from sparse_ft.loggers.wandb_logger import MODES as WANDB_MODES
    from sparse_ft.models import ARCHS
    from sparse_ft.tasks import TASK_KINDS
    from sparse_ft.telemetry.energy_config import BACKENDS, DEFAULTS
    from sparse_ft.train.local_sgd import EVAL_AT, MODES, REDUCES

    def literal(schema, key):
        return set(typing.get_args(typing.get_type_hints(schema)[key]))

    assert literal(schemas.TaskSchema, "kind") == set(TASK_KINDS)
    assert literal(schemas.ModelSchema, "arch") == set(ARCHS)
    assert set(schemas.ENERGY_BACKENDS) == set(BACKENDS)
    assert schemas.schema_defaults(schemas.EnergySchema) == DEFAULTS
    assert literal(schemas.DistributedSchema, "mode") == set(MODES)
    assert literal(schemas.DistributedSchema, "reduce") == set(REDUCES)
    assert literal(schemas.DistributedSchema, "eval_at") == set(EVAL_AT)
    assert literal(schemas.LoggerSchema, "name") == set(LOGGERS)
    assert set(schemas.WANDB_MODES) == set(WANDB_MODES)


def test_schema_defaults_are_the_default_files_values():
    """The listing's defaults are the values a run gets without overrides."""
    for group, option in (("trainer", "default"), ("energy", "auto")):
        yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{option}.yaml"))
        assert {k: v for k, v in schemas.schema_defaults(SCHEMAS[group]).items() if k in yaml} == yaml, group
    top = compose([])
    job = schemas.schema_defaults(schemas.JobSchema)
    assert {k: OmegaConf.to_container(top[k]) if k == "measurement" else top[k] for k in job} == job


@pytest.mark.parametrize("override,key,hint", [
    ("+distributed.local_step=3", "distributed.local_step", "distributed.local_steps"),
    ("+task.generation.beams=3", "task.generation.beams", "task.generation.num_beams"),
    ("+measurement.alon=true", "measurement.alon", "measurement.alone"),
    ("+trainer.gradient_accumulation_steps=2", "trainer.gradient_accumulation_steps", "trainer.grad_accum"),
])
def test_unknown_keys_name_the_closest_key_in_every_group_and_block(override, key, hint):
    with pytest.raises(ConfigError) as err:
        validate(compose(["model=tiny_bert", "task=synthetic_nli", override]))
    assert str(err.value).startswith(f"{key}: unknown key. did you mean {hint} "), str(err.value)


@pytest.mark.parametrize("override,message", [
    ("trainer.optimizer=adam", "trainer.optimizer: 'adam' is not one of adamw, sgd"),
    ("trainer.batch_size=0", "trainer.batch_size: 0 must be >= 1"),
    ("trainer.epochs=abc", "trainer.epochs: 'abc' is not a number"),
    ("trainer.adam_betas=[0.9,1.5]", "trainer.adam_betas: [0.9, 1.5] must be two numbers in [0, 1)"),
    ("trainer.device=gpu", "trainer.device: 'gpu' is not auto, cpu, cuda or cuda:N"),
    ("trainer.checkpoint_every=soon", "trainer.checkpoint_every"),
    ("trainer.preempt_signals=[SIGNOPE]", "trainer.preempt_signals: 'SIGNOPE' is not a signal name"),
    ("trainer.sparse_checkpoints=yes", "trainer.sparse_checkpoints: 'yes' is not true or false"),
    ("trainer.max_steps=0", "trainer.epochs: 0 epochs and max_steps=0: nothing would train"),  # with epochs=0 below
    ("task.max_length=0", "task.max_length: 0 must be >= 1"),
    ("model.drop_last_layers=-1", "model.drop_last_layers: -1 must be >= 0"),
    ("energy.interval_s=0", "energy.interval_s: 0 must be > 0"),
    ("energy.gpus=[-1]", "energy.gpus: [-1]: indices must be >= 0"),
    ("+logger.mode=ofline", "logger.mode: 'ofline' is not a W&B mode; choose one of online, offline, disabled"),
    ("seed=-1", "seed: -1 must be >= 0"),
    ("job=serve", "job: 'serve' is not one of train, evaluate, compress"),
    ("measurement.alone=maybe", "measurement.alone: 'maybe' is not true or false"),
])
def test_bad_values_fail_naming_the_key_before_anything_loads(override, message):
    extra = ["trainer.epochs=0"] if override == "trainer.max_steps=0" else []
    with pytest.raises(ConfigError) as err:
        validate(compose(["model=tiny_bert", "task=synthetic_nli", override, *extra]))
    assert str(err.value).startswith(message), str(err.value)


def test_command_line_keys_are_checked_against_the_schemas():
    err = command_line_key_error(["distributed.reduc=mean"])
    assert str(err).startswith("distributed.reduc: unknown key. did you mean distributed.reduce=mean ('reduce')?")
    assert command_line_key_error(["energy.p0_kw=0.25", "logger.tags=[a]", "task.generation.num_beams=2"]) is None


def test_config_cli_lists_every_key_with_type_default_and_help(capsys):
    from sparse_ft.config.__main__ import main

    assert main(["trainer", "job"]) == 0
    out = capsys.readouterr().out
    assert "trainer.lr = 5e-05  [float]" in out and "peak learning rate" in out
    assert "seed = 42  [int]" in out and "measurement.alone = False  [bool]" in out
    for key in schemas.TrainerSchema.keys():
        assert f"trainer.{key} = " in out
    assert main(["method"]) == 2 and "python -m sparse_ft.methods" in capsys.readouterr().err
    assert main(["task=e2e"]) == 0  # one option file's values instead of the defaults
    out = capsys.readouterr().out
    assert "task.max_length = 512  [int | null]" in out and "task.generation.num_beams = 10" in out
    assert "task.num_train = (not set)" in out
    assert main(["task=no_such_task"]) == 2
