"""A tiny SQuAD v1.1 in the official JSON layout (train-v1.1.json, dev-v1.1.json)."""

from __future__ import annotations

import json
from pathlib import Path

FILLER = " ".join(f"word{i}" for i in range(120))  # pushes some answers past the first window

PARAS = [
    ("The Eiffel Tower is in Paris. It was finished in 1889.", [
        ("Where is the Eiffel Tower?", ["Paris", "in Paris"]),
        ("When was it finished?", ["1889"])]),
    (f"Denver Broncos won Super Bowl 50. {FILLER} The game was played at Levi's Stadium in Santa Clara.", [
        ("Who won Super Bowl 50?", ["Denver Broncos", "Broncos"]),
        ("Where was the game played?", ["Levi's Stadium", "Levi's Stadium in Santa Clara"])]),
    ("Water boils at 100 degrees Celsius at sea level.", [
        ("At what temperature does water boil?", ["100 degrees Celsius", "100 degrees"])]),
]


def squad_doc(version: str = "1.1") -> dict:
    data, n = [], 0
    for c, (context, qas) in enumerate(PARAS):
        items = []
        for question, answers in qas:
            items.append({"id": f"q{n}", "question": question,
                          "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]})
            n += 1
        data.append({"title": f"t{c}", "paragraphs": [{"context": context, "qas": items}]})
    return {"version": version, "data": data}


def make_squad(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (root / name).write_text(json.dumps(squad_doc()), encoding="utf-8")
    return root
