"""GLUE: the nine tasks, read from the official TSV layout or from Hugging Face ``datasets``.

Loading order (never substitutes data):

1. ``task.data_dir`` set: ``<data_dir>/<Folder>/{train,dev,test}.tsv`` in the official GLUE layout
   (``download_glue_data.py``). A missing train/dev file is a :class:`DataError` naming the path;
   the unlabeled ``test.tsv`` is optional.
2. ``task.data_dir`` null: ``datasets.load_dataset(task.hf_dataset, task.hf_config)`` (hub or the
   local cache). If that fails, a :class:`DataError` says how to get the data.

The official files carry a UTF-8 BOM and unquoted text with stray ``"`` characters, so they are read
as UTF-8 with an optional BOM and split on tabs only (no CSV quoting). Every row must have exactly the
header's number of columns and a parseable label, and every byte must be UTF-8, otherwise
:class:`DataError` names file and line. A split a job needs that ends up empty (a header-only file)
is a :class:`DataError` naming the file before the model loads (``tasks.check_splits``).

Split schemes (``task.split_scheme``):

* ``glue``: ``train``, ``validation`` (dev), ``test`` (the unlabeled GLUE test set, when present;
  labels ``None``). MNLI: ``validation_matched``/``validation_mismatched`` (both evaluated) and
  ``test_matched``/``test_mismatched`` (``test_split="test_matched"``).
* ``read`` (the READ paper's protocol, labeled test): with fewer than 10k training rows the dev set is
  shuffled with the fixed seed 0 (independent of the run seed) and split in half, first half
  ``validation``, second half ``test``; otherwise dev becomes ``test`` and 1,000 training rows
  (fixed seed 0) become ``validation``. MNLI: ``validation_mismatched`` -> ``validation``,
  ``validation_matched`` -> ``test``. The GLUE test files are not used.

``max_train_samples`` / ``max_eval_samples`` keep the first n rows of the train split / of every
other split, applied after the split scheme.

Why one file of ~550 lines: most of it is the nine tasks' table (files, columns, label words,
metrics, submission names); the readers and writers are short and use only that table.
"""

from __future__ import annotations

import codecs
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.io import atomic_write_text
from .base import DataError, TaskData, TextExample
from .metrics import glue_metric

logger = logging.getLogger(__name__)

READ_SMALL_TRAIN = 10_000  # below this many training rows, READ splits dev in half
READ_HELDOUT = 1_000  # otherwise this many training rows become the validation split
READ_SEED = 0  # fixed: the READ splits do not depend on the run seed

HOW_TO_GET_GLUE = (
    "Get GLUE either (a) as TSV files in the official layout, e.g. with the GLUE download script "
    "(`python download_glue_data.py --data_dir glue_data --tasks all`, "
    "https://github.com/nyu-mll/GLUE-baselines), then set task.data_dir=/path/to/glue_data; or "
    "(b) through Hugging Face datasets: with task.data_dir=null, run once while online "
    "(`python -c \"import datasets; datasets.load_dataset('nyu-mll/glue', '<config>')\"`) so the "
    "dataset is cached, after which it also loads offline."
)


@dataclass(frozen=True)
class Layout:
    """Columns of one TSV file kind. Names are header names; ints are positions (no header)."""

    text_a: str | int
    text_b: str | int | None
    label: str | int | None  # None: unlabeled (test)
    index: str | int | None  # the row id kept as guid; None: guid = "<split>-<n>"
    header: bool = True
    num_columns: int | None = None  # headerless files: exact column count


@dataclass(frozen=True)
class GlueSpec:
    name: str
    folder: str  # folder under data_dir
    label_names: tuple[str, ...]  # () for regression
    label_format: str  # how the TSV writes labels: "int" (class id) | "name" | "float"
    text_fields: tuple[str, str | None]  # names of text_a / text_b (T5 rendering)
    hf_fields: tuple[str, str | None]  # HF datasets columns for text_a / text_b
    labeled: Layout  # train / dev
    test: Layout  # GLUE test (unlabeled)
    files: tuple[tuple[str, str], ...]  # (split name, file name)
    eval_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    submission: tuple[tuple[str, str], ...]  # (test split, server file name)

    @property
    def problem(self) -> str:
        return "classification" if self.label_names else "regression"

    @property
    def t5_prefix(self) -> str:
        return self.name


_STD_FILES = (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv"))
_PAIR = Layout("sentence1", "sentence2", "label", "index")
_PAIR_TEST = Layout("sentence1", "sentence2", None, "index")

GLUE_TASKS: dict[str, GlueSpec] = {
    s.name: s
    for s in [
        GlueSpec(
            name="cola",
            folder="CoLA",
            label_names=("unacceptable", "acceptable"),
            label_format="int",
            text_fields=("sentence", None),
            hf_fields=("sentence", None),
            # no header: source, label, original label, sentence
            labeled=Layout(3, None, 1, None, header=False, num_columns=4),
            test=Layout("sentence", None, None, "index"),
            files=_STD_FILES,
            eval_splits=("validation",),
            test_splits=("test",),
            submission=(("test", "CoLA.tsv"),),
        ),
        GlueSpec(
            name="sst2",
            folder="SST-2",
            label_names=("negative", "positive"),
            label_format="int",
            text_fields=("sentence", None),
            hf_fields=("sentence", None),
            labeled=Layout("sentence", None, "label", None),
            test=Layout("sentence", None, None, "index"),
            files=_STD_FILES,
            eval_splits=("validation",),
            test_splits=("test",),
            submission=(("test", "SST-2.tsv"),),
        ),
        GlueSpec(
            name="mrpc",
            folder="MRPC",
            label_names=("not_equivalent", "equivalent"),
            label_format="int",
            text_fields=("sentence1", "sentence2"),
            hf_fields=("sentence1", "sentence2"),
            labeled=Layout("#1 String", "#2 String", "Quality", None),
            test=Layout("#1 String", "#2 String", None, "index"),
            files=_STD_FILES,
            eval_splits=("validation",),
            test_splits=("test",),
            submission=(("test", "MRPC.tsv"),),
        ),
        GlueSpec(
            name="qqp",
            folder="QQP",
            label_names=("not_duplicate", "duplicate"),
            label_format="int",
            text_fields=("question1", "question2"),
            hf_fields=("question1", "question2"),
            labeled=Layout("question1", "question2", "is_duplicate", "id"),
            test=Layout("question1", "question2", None, "id"),
            files=_STD_FILES,
            eval_splits=("validation",),
            test_splits=("test",),
            submission=(("test", "QQP.tsv"),),
        ),
        GlueSpec(
            name="stsb",
            folder="STS-B",
            label_names=(),
            label_format="float",
            text_fields=("sentence1", "sentence2"),
            hf_fields=("sentence1", "sentence2"),
            labeled=Layout("sentence1", "sentence2", "score", "index"),
            test=_PAIR_TEST,
            files=_STD_FILES,
            eval_splits=("validation",),
            test_splits=("test",),
            submission=(("test", "STS-B.tsv"),),
        ),
        GlueSpec(
            name="mnli",
            folder="MNLI",
            label_names=("entailment", "neutral", "contradiction"),
            label_format="name",
            # text_a = premise (sentence1), text_b = hypothesis (sentence2)
            text_fields=("premise", "hypothesis"),
            hf_fields=("premise", "hypothesis"),
            labeled=Layout("sentence1", "sentence2", "gold_label", "index"),
            test=_PAIR_TEST,
            files=(
                ("train", "train.tsv"),
                ("validation_matched", "dev_matched.tsv"),
                ("validation_mismatched", "dev_mismatched.tsv"),
                ("test_matched", "test_matched.tsv"),
                ("test_mismatched", "test_mismatched.tsv"),
            ),
            eval_splits=("validation_matched", "validation_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
            submission=(("test_matched", "MNLI-m.tsv"), ("test_mismatched", "MNLI-mm.tsv")),
        ),
        GlueSpec(
            name="qnli",
            folder="QNLI",
            label_names=("entailment", "not_entailment"),
            label_format="name",
            text_fields=("question", "sentence"),
            hf_fields=("question", "sentence"),
            labeled=Layout("question", "sentence", "label", "index"),
            test=Layout("question", "sentence", None, "index"),
            files=_STD_FILES,
            eval_splits=("validation",),
            test_splits=("test",),
            submission=(("test", "QNLI.tsv"),),
        ),
        GlueSpec(
            name="rte",
            folder="RTE",
            label_names=("entailment", "not_entailment"),
            label_format="name",
            text_fields=("sentence1", "sentence2"),
            hf_fields=("sentence1", "sentence2"),
            labeled=_PAIR,
            test=_PAIR_TEST,
            files=_STD_FILES,
            eval_splits=("validation",),
            test_splits=("test",),
            submission=(("test", "RTE.tsv"),),
        ),
        GlueSpec(
            name="wnli",
            folder="WNLI",
            label_names=("not_entailment", "entailment"),
            label_format="int",
            text_fields=("sentence1", "sentence2"),
            hf_fields=("sentence1", "sentence2"),
            labeled=_PAIR,
            test=_PAIR_TEST,
            files=_STD_FILES,
            eval_splits=("validation",),
            test_splits=("test",),
            submission=(("test", "WNLI.tsv"),),
        ),
    ]
}


def get_spec(name: str) -> GlueSpec:
    try:
        return GLUE_TASKS[name]
    except KeyError:
        raise DataError(f"task.name: unknown GLUE task {name!r}; expected one of {sorted(GLUE_TASKS)}") from None


# --------------------------------------------------------------------------------------------
# TSV reading


def _parse_label(spec: GlueSpec, raw: str, where: str):
    raw = raw.strip()
    if spec.label_format == "float":
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{where}: cannot parse score {raw!r} as a number") from None
        if not np.isfinite(value):
            raise DataError(f"{where}: score {raw!r} is not finite")
        return value
    if spec.label_format == "name":
        if raw not in spec.label_names:
            raise DataError(f"{where}: unknown label {raw!r}; expected one of {list(spec.label_names)}")
        return spec.label_names.index(raw)
    try:
        value = int(raw)
    except ValueError:
        raise DataError(f"{where}: cannot parse label {raw!r} as a class id") from None
    if not 0 <= value < len(spec.label_names):
        raise DataError(f"{where}: label {value} out of range 0..{len(spec.label_names) - 1}")
    return value


def _read_utf8(path: Path) -> str:
    """The file's text (UTF-8, an optional BOM dropped, line ends kept); a byte that is no UTF-8
    is a :class:`DataError` naming the file, line and column."""
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: byte 0x{raw[err.start]:02x} at column {column} is not UTF-8 ({err.reason}); "
            "GLUE files are UTF-8: re-encode the file (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def read_glue_tsv(path: str | os.PathLike, spec: GlueSpec, split: str, labeled: bool) -> list[TextExample]:
    """Read one official GLUE TSV file (BOM-tolerant, no quoting) into TextExamples."""
    path = Path(path)
    layout = spec.labeled if labeled else spec.test
    examples: list[TextExample] = []
    lines = _read_utf8(path).split("\n")
    start, ncols = 0, layout.num_columns
    positions = [layout.text_a, layout.text_b, layout.label, layout.index]
    if layout.header:
        if not lines or not lines[0].strip():
            raise DataError(f"{path}:1: empty file, expected a header row")
        header = lines[0].rstrip("\r").split("\t")
        start, ncols = 1, len(header)
        missing = [c for c in positions if c is not None and c not in header]
        if missing:
            raise DataError(
                f"{path}:1: header {header} lacks column(s) {missing}; is this the official GLUE "
                f"{spec.folder} file?"
            )
        positions = [header.index(c) if c is not None else None for c in positions]
    ia, ib, il, ix = positions

    for lineno, line in enumerate(lines[start:], start=start + 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue  # blank (e.g. trailing) line
        fields = line.split("\t")
        where = f"{path}:{lineno}"
        if len(fields) != ncols:
            raise DataError(f"{where}: malformed row, expected {ncols} tab-separated columns, got {len(fields)}")
        label = _parse_label(spec, fields[il], where) if il is not None else None
        guid = fields[ix] if ix is not None else f"{split}-{len(examples)}"
        examples.append(TextExample(guid, fields[ia], fields[ib] if ib is not None else None, label))
    return examples


def load_glue_tsv(
    spec: GlueSpec, data_dir: str | os.PathLike, with_test: bool = True
) -> tuple[dict[str, list[TextExample]], dict]:
    """Read ``<data_dir>/<Folder>/*.tsv``; the unlabeled test files are optional (``with_test``)."""
    folder = Path(data_dir) / spec.folder
    if not folder.is_dir():
        raise DataError(
            f"GLUE {spec.name}: folder {folder} not found (task.data_dir={data_dir} must contain "
            f"{spec.folder}/{spec.files[0][1]} in the official GLUE layout). {HOW_TO_GET_GLUE}"
        )
    splits: dict[str, list[TextExample]] = {}
    files = {}
    for split, fname in spec.files:
        path = folder / fname
        is_test = split in spec.test_splits
        if is_test and not with_test:
            continue
        if not path.is_file():
            if is_test:
                logger.info("GLUE %s: no %s (unlabeled test split skipped)", spec.name, path)
                continue
            raise DataError(f"GLUE {spec.name}: file {path} not found. {HOW_TO_GET_GLUE}")
        splits[split] = read_glue_tsv(path, spec, split, labeled=not is_test)
        files[split] = str(path)
    return splits, {"source": "tsv", "data_dir": str(Path(data_dir).resolve()), "files": files}


# --------------------------------------------------------------------------------------------
# Hugging Face datasets


def load_glue_hf(spec: GlueSpec, hf_dataset: str, hf_config: str) -> tuple[dict[str, list[TextExample]], dict]:
    try:
        import datasets

        ds = datasets.load_dataset(hf_dataset, hf_config)
    except Exception as e:  # offline without cache, unknown id, ...
        raise DataError(
            f"GLUE {spec.name}: could not load Hugging Face dataset {hf_dataset!r} (config "
            f"{hf_config!r}) and task.data_dir is null: {type(e).__name__}: {e}. "
            f"{HOW_TO_GET_GLUE.replace('<config>', hf_config)} Set task.data_dir=<folder> "
            f"with {spec.folder}/train.tsv to use local files."
        ) from e
    fa, fb = spec.hf_fields
    splits: dict[str, list[TextExample]] = {}
    for split, _ in spec.files:
        if split not in ds:
            if split in spec.test_splits:
                continue
            raise DataError(
                f"GLUE {spec.name}: Hugging Face dataset {hf_dataset!r}/{hf_config!r} has no split "
                f"{split!r} (has {list(ds)}); is task.hf_config right?"
            )
        part = ds[split]
        missing = [c for c in (fa, fb, "label") if c is not None and c not in part.column_names]
        if missing:
            raise DataError(
                f"GLUE {spec.name}: {hf_dataset!r}/{hf_config!r} split {split!r} lacks column(s) "
                f"{missing} (has {part.column_names}); is task.hf_config right?"
            )
        cols = part.to_dict()
        n = len(part)
        a, b, labels = cols[fa], cols[fb] if fb else [None] * n, cols["label"]
        idx = cols.get("idx", list(range(n)))
        out = []
        for i in range(n):
            lab = labels[i]
            if lab is None or lab < 0:
                lab = None  # GLUE test splits: -1 (STS-B: -1.0)
            elif spec.label_format == "float":
                lab = float(lab)
            else:
                lab = int(lab)
            out.append(TextExample(str(idx[i]), a[i], b[i], lab))
        splits[split] = out
    return splits, {"source": "huggingface", "hf_dataset": hf_dataset, "hf_config": hf_config}


# --------------------------------------------------------------------------------------------
# split schemes


def _permutation(n: int) -> np.ndarray:
    return np.random.default_rng(READ_SEED).permutation(n)


def apply_read_scheme(spec: GlueSpec, splits: dict[str, list[TextExample]]) -> tuple[dict, dict]:
    """The READ paper's splits (labeled test); see the module docstring."""
    train = splits["train"]
    if spec.name == "mnli":
        out = {
            "train": train,
            "validation": splits["validation_mismatched"],
            "test": splits["validation_matched"],
        }
        rule = "validation_mismatched -> validation, validation_matched -> test"
    elif len(train) < READ_SMALL_TRAIN:
        dev = splits["validation"]
        perm = _permutation(len(dev))
        half = len(dev) // 2
        out = {
            "train": train,
            "validation": [dev[i] for i in perm[:half]],
            "test": [dev[i] for i in perm[half:]],
        }
        rule = f"train < {READ_SMALL_TRAIN}: dev shuffled (seed {READ_SEED}) and halved -> validation / test"
    else:
        perm = _permutation(len(train))
        held = set(perm[:READ_HELDOUT].tolist())
        out = {
            "train": [e for i, e in enumerate(train) if i not in held],
            "validation": [train[i] for i in perm[:READ_HELDOUT]],
            "test": splits["validation"],
        }
        rule = f"dev -> test; {READ_HELDOUT} train rows (seed {READ_SEED}) -> validation"
    return out, {"read_rule": rule}


def _cap(examples: Sequence, n: int | None) -> Sequence:
    return examples if n is None else examples[:n]


def load_glue(task_cfg, seed: int | None = None) -> TaskData:
    """Build the TaskData of a GLUE task from its config (see conf/task/<name>.yaml)."""
    spec = get_spec(str(task_cfg.get("name")))
    data_dir = task_cfg.get("data_dir")
    scheme = task_cfg.get("split_scheme") or "glue"
    if data_dir:
        splits, info = load_glue_tsv(spec, data_dir, with_test=scheme == "glue")
    else:
        hf_dataset = task_cfg.get("hf_dataset") or "nyu-mll/glue"
        hf_config = task_cfg.get("hf_config") or spec.name
        splits, info = load_glue_hf(spec, hf_dataset, hf_config)
    info["split_scheme"] = scheme
    info["original_sizes"] = {k: len(v) for k, v in splits.items()}

    if scheme == "read":
        splits, extra = apply_read_scheme(spec, splits)
        info.update(extra)
        eval_splits, test_split = ["validation"], "test"
    elif scheme == "glue":
        eval_splits = list(spec.eval_splits)
        test_split = spec.test_splits[0] if spec.test_splits[0] in splits else None
    else:
        raise DataError(f"task.split_scheme: unknown scheme {scheme!r}; expected glue or read")

    max_train, max_eval = task_cfg.get("max_train_samples"), task_cfg.get("max_eval_samples")
    splits = {k: list(_cap(v, max_train if k == "train" else max_eval)) for k, v in splits.items()}
    info["max_train_samples"], info["max_eval_samples"] = max_train, max_eval
    info["sizes"] = {k: len(v) for k, v in splits.items()}

    metric = glue_metric(spec.name)
    submission = dict(spec.submission).get(test_split) if scheme == "glue" and test_split else None
    return TaskData(
        name=spec.name,
        modality="text",
        problem=spec.problem,
        label_names=list(spec.label_names),
        splits=splits,
        train_split="train",
        eval_splits=eval_splits,
        test_split=test_split,
        main_metric=metric.main_metric,
        metric_fn=metric,
        t5_prefix=spec.t5_prefix,
        text_fields=spec.text_fields,
        submission_name=submission,
        info=info,
    )


# --------------------------------------------------------------------------------------------
# GLUE server submissions


def submission_filename(task: TaskData, split: str) -> str:
    """The GLUE-server file name for predictions on ``split`` of ``task``."""
    if task.name not in GLUE_TASKS:
        raise ValueError(f"{task.name!r} is not a GLUE task; no submission file")
    if task.info.get("split_scheme", "glue") != "glue":
        raise ValueError(
            f"GLUE submissions need task.split_scheme=glue (the official test set); this run used "
            f"{task.info.get('split_scheme')!r}, whose test split is carved from labeled data"
        )
    names = dict(GLUE_TASKS[task.name].submission)
    if split not in names:
        raise ValueError(f"{task.name}: no GLUE submission for split {split!r}; expected one of {list(names)}")
    return names[split]


def write_submission(task: TaskData, split: str, predictions: np.ndarray, path_dir) -> Path:
    """Write ``<path_dir>/<Task>.tsv`` for the GLUE server (header ``index\\tprediction``).

    ``predictions``: class ids ``(n,)`` or scores ``(n, classes)`` (argmax) for classification;
    ``(n,)``/``(n, 1)`` values for STS-B (clipped to [0, 5], 3 decimals). RTE/QNLI/MNLI write
    label names, the other classification tasks class ids. ``index`` is each row's test-file id.
    """
    spec = GLUE_TASKS.get(task.name)
    fname = submission_filename(task, split)
    examples = task.splits[split]
    preds = np.asarray(predictions)
    if spec.problem == "regression":
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    elif preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1 or len(preds) != len(examples):
        raise ValueError(f"{task.name}/{split}: got predictions of shape {preds.shape} for {len(examples)} rows")
    original = task.info.get("original_sizes", {}).get(split)
    if original is not None and original != len(examples):
        logger.warning(
            "%s: split %s was capped to %d of %d rows (task.max_eval_samples); the submission is incomplete",
            task.name,
            split,
            len(examples),
            original,
        )
    # a text-to-text model's output that is no label word (-1) / no number (NaN): the server
    # needs a value on every row, so it gets class 0 / 0.0, and the count is logged
    as_float = preds.astype(np.float64)
    invalid = ~np.isfinite(as_float) if spec.problem == "regression" else ~(np.isfinite(as_float) & (as_float >= 0))
    if invalid.any():
        logger.warning("%s/%s: %d of %d predictions are no valid %s; written as %s", task.name, split, int(invalid.sum()),
                       len(preds), "number" if spec.problem == "regression" else "label",
                       "0.000" if spec.problem == "regression" else spec.label_names[0])
    rows = ["index\tprediction"]
    for ex, p, bad in zip(examples, preds, invalid):
        if spec.problem == "regression":
            value = f"{min(max(0.0 if bad else float(p), 0.0), 5.0):.3f}"
        else:
            k = 0 if bad else int(p)
            if not 0 <= k < len(spec.label_names):
                raise ValueError(f"{task.name}: predicted class {k} out of range")
            value = spec.label_names[k] if spec.label_format == "name" else str(k)
        rows.append(f"{ex.guid}\t{value}")
    path = Path(path_dir) / fname
    atomic_write_text(path, "\n".join(rows) + "\n")
    logger.info("wrote GLUE submission %s (%d rows)", path, len(examples))
    return path
