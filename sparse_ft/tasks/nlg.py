"""Data-to-text generation (the PST paper's Table 3, after LoRA's GPT-2 setup): E2E, DART, WebNLG.

Each example's table is linearised into a prompt; the model (a causal LM, models/causal_lm.py)
learns to continue it with the text, the loss on the text only. Training uses every (table,
reference) pair; evaluation has one example per table with all its references, decodes a text
(greedy or beam search, ``task.generation``) and scores it against them.

Official files from ``task.data_dir`` (a missing file fails naming it); for ``e2e`` also, with
``task.data_dir=null``, the Hugging Face dataset ``task.hf_dataset`` (``tuetschek/e2e_nlg``, the
official E2E data: splits train / validation / test, columns ``meaning_representation`` and
``human_reference``, one row per reference, grouped per MR as the CSVs are). DART and WebNLG have
no ``datasets`` path wired (their hub copies re-split or re-format the official files):

* ``e2e``: the E2E NLG Challenge CSVs ``trainset.csv``, ``devset.csv``, ``testset_w_refs.csv``
  (header ``mr,ref``; one row per reference, rows of the same MR grouped). Prompt: the MR as
  written (``name[The Vaults], eatType[pub], ...``).
* ``dart``: ``dart-v1.1.1-full-{train,dev,test}.json`` (a list of ``{"tripleset": [[s, p, o],
  ...], "annotations": [{"source", "text"}, ...]}``). Prompt: ``s : p : o | s : p : o``.
* ``webnlg``: the WebNLG challenge 2017 XML release, ``train/``, ``dev/``, ``test/`` folders of
  ``*.xml`` (searched recursively: ``<entry><modifiedtripleset><mtriple>s | p | o</mtriple>
  ...<lex>text</lex>``). Prompt: ``s : p : o | s : p : o`` (underscores in entity names kept).

Splits: ``train``, ``validation`` (the dev files; selects the best checkpoint) and ``test``
(labelled: scored once at the end, as the papers report). Caps keep the first n tables of the
shuffled split (fixed seed 0), training pairs after the cap on tables.

Metrics (``NLGMetric``), fractions in [0, 1] like every metric of the project: ``bleu`` (main)
= sacrebleu's corpus BLEU (13a tokenisation, mixed case, every reference of each example; the
variable number of references padded with None, as sacrebleu documents) / 100, and ``ter`` = sacrebleu's
TER / 100 (lower is better). NIST, METEOR, ROUGE-L and CIDEr (the E2E/WebNLG challenge scripts)
are listed under ``not_available`` with the reason: they need packages that are not
installed here (nltk, rouge-score, pycocoevalcap) or Java, and a different number is never
reported under their names.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import CAP_SEED, DataError, TaskData, UidExample, cap_shuffled, hf_split

NLG_KINDS = ("e2e", "dart", "webnlg")
FILES = {
    "e2e": {"train": "trainset.csv", "validation": "devset.csv", "test": "testset_w_refs.csv"},
    "dart": {"train": "dart-v1.1.1-full-train.json", "validation": "dart-v1.1.1-full-dev.json", "test": "dart-v1.1.1-full-test.json"},
    "webnlg": {"train": "train", "validation": "dev", "test": "test"},
}
NOT_AVAILABLE = {
    "nist": "n/a: needs nltk (NIST) or the E2E challenge's Perl mteval script; neither is installed",
    "meteor": "n/a: needs the METEOR 1.5 Java jar (E2E/WebNLG scripts) or nltk with WordNet data; not installed offline",
    "rouge_l": "n/a: needs the rouge-score package (or the E2E script's pycocoevalcap); not installed",
    "cider": "n/a: needs pycocoevalcap (the E2E script's CIDEr); not installed",
}
METRIC_KEYS = {"e2e": ("nist", "meteor", "rouge_l", "cider"), "dart": ("meteor",), "webnlg": ("meteor",)}


@dataclass(frozen=True)
class NLGExample(UidExample):
    gold, texts = "references", ("source", None)  # class attributes, not fields

    guid: str
    source: str  # the linearised table (the prompt)
    target: str | None  # training: this pair's reference; evaluation: the first reference
    references: tuple[str, ...]  # every reference of the table
    uid: int  # unique over all splits: features carry it as their label


# --- metrics --------------------------------------------------------------------------------------


def corpus_scores(hypotheses: list[str], references: list[list[str]]) -> dict:
    """sacrebleu BLEU and TER over the corpus, every reference of each hypothesis (fractions)."""
    from sacrebleu.metrics import BLEU, TER

    width = max(len(r) for r in references)
    # None = no reference (sacrebleu's documented padding; '' would count as an empty reference in TER)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    bleu, ter = BLEU(), TER()
    b = bleu.corpus_score(hypotheses, streams)
    t = ter.corpus_score(hypotheses, streams)
    return {"bleu": b.score / 100.0, "ter": t.score / 100.0, "signature": {"bleu": str(bleu.get_signature()), "ter": str(ter.get_signature())}}


class NLGMetric:
    """``(predictions: generated token ids (n, L), -1 padded; labels: example uids) -> dict``.

    ``decode`` (ids -> text) is set by the model bundle, which owns the tokenizer."""

    main_metric = "bleu"

    def __init__(self, kind: str, examples: dict[int, NLGExample]):
        self.kind, self.examples = kind, examples
        self.decode = None

    def __call__(self, predictions, labels) -> dict:
        if self.decode is None:
            raise RuntimeError("NLGMetric.decode is unset: the model bundle sets it (models/causal_lm.py)")
        p = np.asarray(predictions)
        hyps, refs, empty = [], [], 0
        for row, uid in zip(p, np.asarray(labels).astype(np.int64)):
            text = self.decode([int(t) for t in row if t >= 0]).strip()
            empty += not text
            hyps.append(text)
            refs.append(list(self.examples[int(uid)].references))
        scores = corpus_scores(hyps, refs)
        out = {"bleu": scores["bleu"], "ter": scores["ter"], "main": scores["bleu"], "invalid_predictions": empty}
        return out

    def not_available(self) -> dict:
        return {k: NOT_AVAILABLE[k] for k in METRIC_KEYS[self.kind]}


# --- reading the official files ------------------------------------------------------------------


def linearise(triples) -> str:
    return " | ".join(" : ".join(str(x).strip() for x in t) for t in triples)


def _group(pairs) -> list[tuple[str, list[str]]]:
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for mr, ref in pairs:
        refs = groups.setdefault(mr.strip(), [])
        if ref and ref.strip():
            refs.append(ref.strip())
    return list(groups.items())


def _read_e2e_hf(name: str, split: str) -> list[tuple[str, list[str]]]:
    return hf_split(name, split, f"set task.data_dir to a folder with {', '.join(FILES['e2e'].values())}",
                    lambda ds: _group(zip(ds["meaning_representation"], ds["human_reference"])))


def _read_e2e(path: Path) -> list[tuple[str, list[str]]]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "mr" not in reader.fieldnames:
                raise DataError(f"{path}: expected the E2E CSV header 'mr,ref', got {reader.fieldnames}")
            return _group((row["mr"], row.get("ref")) for row in reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable E2E CSV ({type(err).__name__}: {err})") from err


def _read_dart(path: Path) -> list[tuple[str, list[str]]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [(linearise(r["tripleset"]), [a["text"].strip() for a in r.get("annotations", []) if a.get("text")]) for r in rows]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not the DART JSON layout (a list of {{tripleset, annotations: [{{text}}]}}): "
                        f"{type(err).__name__}: {err}") from err


def _read_webnlg(folder: Path) -> list[tuple[str, list[str]]]:
    files = sorted(folder.rglob("*.xml")) if folder.is_dir() else []
    if not files:
        raise DataError(f"{folder}: no *.xml files (expected the WebNLG 2017 release layout)")
    out = []
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as err:
            raise DataError(f"{path}: not valid XML ({err})") from err
        for entry in root.iter("entry"):
            triples = [m.text.split(" | ") for m in entry.iter("mtriple") if m.text]
            if not triples:
                raise DataError(f"{path}: entry {entry.get('eid')} has no <modifiedtripleset><mtriple>")
            out.append((linearise(triples), [lex.text.strip() for lex in entry.iter("lex") if lex.text and lex.text.strip()]))
    return out


READERS = {"e2e": _read_e2e, "dart": _read_dart, "webnlg": _read_webnlg}


def load_nlg(task_cfg, seed: int | None = None) -> TaskData:
    kind = task_cfg.get("kind")
    hub = task_cfg.get("data_dir") is None  # e2e only (validated)
    data_dir = None if hub else Path(str(task_cfg.get("data_dir")))
    splits, files, uid = {}, {}, 0
    for split, fname in FILES[kind].items():
        if hub:
            path = f"{task_cfg.get('hf_dataset')}[{split}]"
            tables = _read_e2e_hf(task_cfg.get("hf_dataset"), split)
        else:
            path = data_dir / fname
            if not path.exists():
                raise DataError(f"{path}: missing; task.data_dir={data_dir} should hold the official {kind} files "
                                f"({', '.join(FILES[kind].values())})")
            tables = READERS[kind](path)
        if not tables:
            raise DataError(f"{path}: holds no {kind} table")
        bare = [i for i, (_, refs) in enumerate(tables) if not refs]
        if bare:
            raise DataError(f"{path}: table {bare[0]} ({tables[bare[0]][0][:60]!r}) has no reference text; every {split} table "
                            "needs one (training pairs / BLEU) — the official files have them")
        cap = task_cfg.get("max_train_samples" if split == "train" else "max_eval_samples")
        tables = cap_shuffled(tables, cap)
        examples = []
        for n, (source, refs) in enumerate(tables):
            if split == "train":
                for k, ref in enumerate(refs):  # one training example per (table, reference) pair
                    examples.append(NLGExample(f"{split}-{n}-{k}", source, ref, (ref,), uid))
                    uid += 1
            else:
                examples.append(NLGExample(f"{split}-{n}", source, refs[0] if refs else None, tuple(refs), uid))
                uid += 1
        splits[split] = examples
        files[split] = str(path)
    metric = NLGMetric(kind, {ex.uid: ex for exs in splits.values() for ex in exs})
    info = {
        "source": f"Hugging Face dataset {task_cfg.get('hf_dataset')}" if hub else "official files",
        "files": files,
        "split_scheme": f"train = (table, reference) pairs of {FILES[kind]['train']}; validation = {FILES[kind]['validation']}; "
        f"test = {FILES[kind]['test']} (labelled: scored once at the end)",
        "max_train_samples": task_cfg.get("max_train_samples"),
        "max_eval_samples": task_cfg.get("max_eval_samples"),
        "cap_rule": f"first n tables after a shuffle with fixed seed {CAP_SEED}",
        "not_available": metric.not_available(),
        "generation": dict(task_cfg.get("generation") or {}),
    }
    return TaskData(
        name=str(task_cfg.get("name", kind)),
        modality="text",
        problem="generation",
        label_names=[],
        splits=splits,
        train_split="train",
        eval_splits=["validation"],
        test_split="test",
        main_metric="bleu",
        metric_fn=metric,
        info=info,
    )
