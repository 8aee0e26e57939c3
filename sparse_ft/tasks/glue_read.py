"""GLUE's files: what a task's files hold (`Layout`, `GlueSpec`; the nine tasks' table is in
`glue.py`) and the readers of the official TSV layout (``<data_dir>/<Folder>/*.tsv``) and of
Hugging Face ``datasets``, into `TextExample`s.

The official files carry a UTF-8 BOM and unquoted text with stray ``"`` characters, so they are read
as UTF-8 with an optional BOM and split on tabs only (no CSV quoting). Every row must have exactly the
header's number of columns and a parseable label, and every byte must be UTF-8, otherwise
:class:`DataError` names file and line.
"""

from __future__ import annotations

import codecs
import logging
import os
from pathlib import Path
from dataclasses import dataclass

import numpy as np

from .base import DataError, TextExample

logger = logging.getLogger(__name__)

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


_STD_FILES = (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv"))


@dataclass(frozen=True)
class GlueSpec:
    name: str
    folder: str  # folder under data_dir
    label_names: tuple[str, ...]  # () for regression
    label_format: str  # how the TSV writes labels: "int" (class id) | "name" | "float"
    text_fields: tuple[str, str | None]  # names of text_a / text_b (T5 rendering), also the HF datasets columns
    labeled: Layout  # train / dev
    test: Layout  # GLUE test (unlabeled)
    files: tuple[tuple[str, str], ...] = _STD_FILES  # (split name, file name)
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    submission: tuple[tuple[str, str], ...] = ()  # (test split, server file name); () = ("test", "<folder>.tsv")

    def __post_init__(self) -> None:
        if not self.submission:
            object.__setattr__(self, "submission", (("test", f"{self.folder}.tsv"),))

    @property
    def hf_fields(self) -> tuple[str, str | None]:
        """The Hugging Face datasets columns of text_a / text_b (named as the text fields)."""
        return self.text_fields

    @property
    def problem(self) -> str:
        return "classification" if self.label_names else "regression"

    @property
    def t5_prefix(self) -> str:
        return self.name


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
