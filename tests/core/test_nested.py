"""core/nested.flatten, the one flatten of the package: config diffs and sweep plans keep an empty
dict as a leaf, the report's columns and the logger keys drop it; lists stay leaves."""

from __future__ import annotations

from sparse_ft.core.nested import flatten

NESTED = {"a": {"b": 1, "c": {"d": [1, 2]}, "e": {}}, "f": None}


def test_flatten_keeps_an_empty_dict_as_a_leaf_by_default():
    assert flatten(NESTED) == {"a.b": 1, "a.c.d": [1, 2], "a.e": {}, "f": None}


def test_flatten_can_drop_empty_dicts_and_use_another_separator():
    assert flatten(NESTED, keep_empty=False) == {"a.b": 1, "a.c.d": [1, 2], "f": None}
    assert flatten(NESTED, "run", "/", keep_empty=False) == {"run/a/b": 1, "run/a/c/d": [1, 2], "run/f": None}


def test_a_leaf_at_the_top_is_itself_under_its_prefix():
    assert flatten(3, "x") == {"x": 3} and flatten(None) == {}
