"""Tiny E2E / DART / WebNLG copies in their official file layouts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

E2E_ROWS = [
    ("name[The Vaults], eatType[pub], priceRange[cheap]", "The Vaults is a cheap pub."),
    ("name[The Vaults], eatType[pub], priceRange[cheap]", "The Vaults pub is cheap."),
    ("name[Aromi], food[Italian], area[city centre]", "Aromi serves Italian food in the city centre."),
    ("name[Bibimbap House], food[Korean]", "Bibimbap House serves Korean food."),
    ("name[Bibimbap House], food[Korean]", "Korean food is served at Bibimbap House."),
    ("name[Bibimbap House], food[Korean]", "Try Bibimbap House for Korean food."),
]

DART_ROWS = [
    {"tripleset": [["Mars Hill College", "JOINED", "1973"], ["Mars Hill College", "LOCATION", "Mars Hill, North Carolina"]],
     "subtree_was_extended": False,
     "annotations": [{"source": "WikiSQL_decl_sents", "text": "A school from Mars Hill, North Carolina, joined in 1973."}]},
    {"tripleset": [["Aarhus Airport", "CITY_SERVED", "Aarhus"]],
     "annotations": [{"source": "webnlg", "text": "Aarhus Airport serves Aarhus."},
                     {"source": "webnlg", "text": "Aarhus is served by Aarhus Airport."}]},
]

WEBNLG_XML = """<?xml version="1.0" ?>
<benchmark>
  <entries>
    <entry category="Airport" eid="Id1" size="1">
      <originaltripleset><otriple>Aarhus_Airport | cityServed | "Aarhus, Denmark"@en</otriple></originaltripleset>
      <modifiedtripleset><mtriple>Aarhus_Airport | cityServed | "Aarhus, Denmark"</mtriple></modifiedtripleset>
      <lex comment="good" lid="Id1">The Aarhus is the airport of Aarhus, Denmark.</lex>
      <lex comment="good" lid="Id2">Aarhus Airport serves the city of Aarhus, Denmark.</lex>
    </entry>
    <entry category="Astronaut" eid="Id2" size="2">
      <originaltripleset><otriple>Alan_Bean | nationality | United_States</otriple></originaltripleset>
      <modifiedtripleset>
        <mtriple>Alan_Bean | nationality | United_States</mtriple>
        <mtriple>Alan_Bean | occupation | Test_pilot</mtriple>
      </modifiedtripleset>
      <lex comment="good" lid="Id1">Alan Bean is a US test pilot.</lex>
    </entry>
  </entries>
</benchmark>
"""


def make_e2e(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        with (root / name).open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["mr", "ref"])
            w.writerows(E2E_ROWS)
    return root


def make_dart(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        (root / f"dart-v1.1.1-full-{split}.json").write_text(json.dumps(DART_ROWS), encoding="utf-8")
    return root


def make_webnlg(root: Path) -> Path:
    for split in ("train", "dev", "test"):
        folder = root / split / "2triples"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}_Airport.xml").write_text(WEBNLG_XML, encoding="utf-8")
    return root
