"""One cost table for every method: the figures the papers argue about, in the same units.

    python -m sparse_ft.report PATH [PATH ...] --costs

One row per method × model × task × setting (seeds pooled: mean ± std), read from run
directories alone. A figure a run did not measure says why ("n/a: no GPU"), never 0:

- score: the task's main validation metric (×100 for fractions);
- trainable (count and % of the pretrained model), updated % (entries that differ from the
  pretrained weights), added (new parameters: adapters, LoRA, side networks);
- optimizer state MiB: bytes of the optimizer's state tensors at the end of training
  (`summary.optimizer.state_bytes`), the same count for every method;
- peak training memory MiB (`memory.peak_bytes.train`; peak RSS on CPU, the allocator's peak on
  CUDA: `memory.measure` says which), train time s and samples/s;
- energy kWh with its estimator (`energy.*`), batch-1 inference latency ms (`inference.*`);
- artifact MiB and its ratio to the dense fp32 checkpoint: the smallest file the run wrote that
  holds the result (a FISH delta, a compressed ERE artifact, a full checkpoint);
- communication: full-model equivalents sent per worker (local SGD runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .aggregate import canon, mean_std, method_sort, setting_keys, setting_label, task_sort, varying_config_keys
from .collect import ENERGY_SOURCES, Run
from .render import fmt_num, md_table
from .verdicts import not_alone_summary

MiB = float(1 << 20)
_TRAINER_SETTING = ("trainer.lr", "trainer.epochs", "trainer.max_steps", "trainer.batch_size")


@dataclass
class CostRow:
    method: Any
    model: Any
    task: Any
    setting: str
    runs: list[Run]


def _why_missing(runs: Sequence[Run], what: str) -> str:
    """The reason a figure is absent, from what the runs say about themselves."""
    r = runs[0]
    job = (r.summary or {}).get("job")
    if what in ("optimizer", "train", "memory", "throughput") and job in ("compress", "evaluate"):
        return f"n/a: {job} job, no training"
    if what == "energy":
        reason = r.block("energy").get("reason")
        if reason:
            return "n/a: " + str(reason).split(" (")[0][:40]
        return "n/a: not measured"
    if what == "inference":
        return "n/a: not measured (trainer.measure_inference=false)"
    if what == "communication":
        return "n/a: one process"
    if what == "artifact":
        return "n/a: no artifact written"
    return "n/a: not recorded"


def _cell(runs: Sequence[Run], value: Callable[[Run], float | None], what: str, scale: float = 1.0,
          decimals: int | None = None) -> str:
    vals = [value(r) for r in runs]
    have = [v * scale for v in vals if v is not None]
    if not have:
        return _why_missing(runs, what)
    m, sd, n = mean_std(have)
    text = fmt_num(m, decimals)
    if sd and n > 1:  # no "± 0" noise on figures that do not vary between seeds
        text += f" ± {fmt_num(sd, decimals)}"
    return text


def _energy_cell(runs: Sequence[Run]) -> str:
    pairs = [r.energy for r in runs]
    have = [(v, s) for v, s in pairs if v is not None]
    if not have:
        return _why_missing(runs, "energy")
    m, sd, n = mean_std(v for v, _ in have)
    sources = sorted({s for _, s in have}, key=ENERGY_SOURCES.index)
    return f"{m:.3g}" + (f" ± {sd:.2g}" if n > 1 and sd else "") + f" ({'/'.join(sources)})"


def _holds_result(name: str) -> bool:
    """Weights that restore the result with the pretrained model (full checkpoint, delta, side network,
    compressed artifact); not masks, manifests or the resumable checkpoint."""
    base = name.rsplit("/", 1)[-1]
    return (name.endswith(".safetensors") and not name.startswith("checkpoints/last/")
            and "mask" not in base)


def _artifact(run: Run) -> tuple[str, float, float] | None:
    """(file, bytes, ratio to dense fp32) of the smallest artifact that holds the run's result."""
    best = None
    for name, entry in run.block("storage").get("artifacts", {}).items() if run.block("storage") else []:
        if not isinstance(entry, dict) or not _holds_result(name):
            continue
        size, ratio = entry.get("bytes"), entry.get("ratio_to_dense_fp32")
        if isinstance(size, (int, float)) and isinstance(ratio, (int, float)) and (best is None or size < best[1]):
            best = (name, float(size), float(ratio))
    return best


def _artifact_cell(runs: Sequence[Run]) -> str:
    arts = [_artifact(r) for r in runs]
    have = [a for a in arts if a is not None]
    if not have:
        return _why_missing(runs, "artifact")
    size = mean_std(a[1] / MiB for a in have)[0]
    ratio = mean_std(a[2] for a in have)[0]
    name = have[0][0].rsplit("/", 1)[-1]
    return f"{fmt_num(size)} ({100 * ratio:.3g}% of dense, {name})"


def _comm(run: Run) -> float | None:
    return run.figure("communication.full_model_equivalents")


def _optimizer_mib(run: Run) -> float | None:
    b = run.figure("optimizer.state_bytes")
    return None if b is None else b / MiB


def _peak_mib(run: Run) -> float | None:
    b = run.peak_train_bytes
    return None if b is None else b / MiB


def cost_rows(runs: Sequence[Run]) -> list[CostRow]:
    """Completed runs grouped by job × method × model × task × the method's own varying settings
    (an evaluate or compress run is never pooled with training runs; its method reads "fish
    (evaluate)", "ere (compress)")."""
    buckets: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.completed:
            buckets.setdefault((r.job, canon(r.method), canon(r.model), canon(r.task)), []).append(r)
    rows: list[CostRow] = []
    for (job, _, _, _), rs in buckets.items():
        keys, _ = setting_keys(rs, varying_config_keys(rs))
        # what a row compares: the method's own options and the training length/step size, not the
        # sweep's bookkeeping (names, lr tables, measurement switches)
        keys = [k for k in keys if k.startswith("method.") or k in _TRAINER_SETTING]
        by_setting: dict[str, list[Run]] = {}
        for r in rs:
            setting = tuple((k, canon(r.flat_config[k])) for k in keys if k in r.flat_config)
            by_setting.setdefault(setting_label(setting), []).append(r)
        for label, group in by_setting.items():
            method = group[0].method if job == "train" else f"{group[0].method} ({job})"
            rows.append(CostRow(method, group[0].model, group[0].task, label, group))
    return sorted(rows, key=lambda c: (task_sort(c.task), str(c.model), method_sort(c.method), c.setting))


HEADER = ["method", "model", "task", "setting", "seeds", "score (×100)", "trainable (count)", "trainable %",
          "updated %", "added (count)", "optimizer state MiB", "peak train mem MiB", "train time s",
          "train samples/s", "energy kWh (estimator)", "latency b=1 ms", "artifact MiB (% of dense)",
          "communication (full-model equiv.)", "measured alone"]


NOT_ALONE = " †"  # beside a memory or time figure taken where the run shared its process or the machine


def _alone_cell(runs: Sequence[Run]) -> tuple[str, str]:
    """("measured alone" column, the mark for memory/time cells): one line per reason, counted over
    the row's runs (a row of seeds would otherwise repeat each seed's own wording)."""
    ok, why = not_alone_summary(runs)
    if ok is False:
        return "no: " + why, NOT_ALONE
    if ok is None:
        return "unknown: not recorded", ""
    return "yes", ""


def _marked(text: str, mark: str) -> str:
    return text + mark if mark and not text.startswith("n/a") else text


def cost_table(runs: Sequence[Run]) -> str:
    rows = []
    for c in cost_rows(runs):
        rs = c.runs
        alone, mark = _alone_cell(rs)
        scale = 100.0 if all(r.main is None or abs(r.main) <= 1 for r in rs) else 1.0
        rows.append([
            c.method, c.model, c.task, c.setting, len(rs),
            _cell(rs, lambda r: r.main, "score", scale, 2),
            _cell(rs, lambda r: r.figure("params.trainable"), "params", 1.0, 0),
            _cell(rs, lambda r: r.trainable_fraction, "params", 100.0),
            _cell(rs, lambda r: r.updated_fraction, "params", 100.0),
            _cell(rs, lambda r: r.added, "params", 1.0, 0),
            _cell(rs, _optimizer_mib, "optimizer"),
            _marked(_cell(rs, _peak_mib, "memory", 1.0, 0), mark),
            _marked(_cell(rs, lambda r: r.figure("time.wall_s.train"), "train", 1.0, 1), mark),
            _marked(_cell(rs, lambda r: r.samples_per_s, "throughput", 1.0, 1), mark),
            _energy_cell(rs),
            _marked(_cell(rs, lambda r: r.figure("inference.latency_ms_median"), "inference", 1.0, 1), mark),
            _artifact_cell(rs),
            _cell(rs, _comm, "communication"),
            alone,
        ])
    if not rows:
        return "_No completed runs: no costs to show._"
    return md_table(HEADER, rows, "llll" + "r" * (len(HEADER) - 4))


NOTES = [
    "score: the task's main metric on the validation split, mean ± sample std over seeds (×100 for fractions), one row "
    "per lr of the grid. With `task.split_scheme=read` that split is carved from the training data and only selects "
    "the lr; the sections above report the official dev set's score of the selected lr.",
    "trainable: entries the optimizer may change; updated %: entries whose bits differ from the pretrained "
    "weights at the end; added: parameters that did not exist in the pretrained model. None of them is a sparsity.",
    "optimizer state MiB: the optimizer's state tensors at the end of training (AdamW: two fp32 moments per "
    "trained entry; FISH keeps them for the masked entries only), counted the same way for every method.",
    "peak train mem MiB: `memory.peak_bytes.train` (CPU: the process's peak RSS, which includes the Python "
    "runtime and libraries; CUDA: the allocator's peak). On CPU, jobs of one multirun share a process that keeps "
    "earlier jobs' memory resident: compare CPU memory only between runs started in their own process.",
    "measured alone: whether every run of the row had its own fresh process and no other sparse-ft job on the machine "
    "at the same time (summary.json `measurement`); where not, its memory, time, throughput and latency figures carry "
    "† and do not compare with the others (a process keeps earlier jobs' memory; jobs side by side share the cores). "
    "`python -m sparse_ft.jobs.each_process` runs a sweep that way.",
    "energy kWh: the first available of " + " > ".join(f"`{s}`" for s in ENERGY_SOURCES)
    + "; on a machine without NVML the run says why it has none.",
    "latency b=1 ms: median over `trainer.inference_examples` examples of the validation split, one at a time.",
    "artifact: the smallest file the run wrote that restores its result with the pretrained model (full "
    "checkpoint, sparse delta, pruned weights, side network or adapters, compressed artifact; masks alone do not), "
    "with its bytes over the dense fp32 checkpoint's.",
]


def costs_markdown(runs: Sequence[Run]) -> str:
    return cost_table(runs) + "\n\n" + "\n".join(f"- {n}" for n in NOTES)
