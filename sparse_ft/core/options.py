"""Typed options: one dataclass per method and per config group, each field with its help text
and its range. The one source for validation, `--help`-style listings and "did you mean" errors.

A method declares

    @dataclass
    class FishOptions(MethodOptions):
        density: float = option(0.005, "k/|θ|: fraction of all parameters trained", low=0, low_open=True, high=1)

and `FishOptions.parse(cfg.method)` returns a typed, checked object or raises `ConfigError` naming
the key (`method.density: 1.5 must be <= 1`). Unknown keys fail with the closest valid name, so a
misspelt `+method.desnity=0.01` never trains at the default. The other config groups (trainer,
task, model, …) are `Options` dataclasses too (sparse_ft/config/schemas.py). The YAML files in
`conf/` stay the user-facing files; their key comments are written from the `help` texts
(`python -m sparse_ft.config --write-yaml-comments`), and `python -m sparse_ft.methods <method>` /
`python -m sparse_ft.config <group>` print every key with its help.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, get_args, get_origin

from .errors import ConfigError


def option(default: Any = MISSING, help: str = "", *, low=None, high=None, low_open: bool = False,
           high_open: bool = False, choices: tuple | None = None, check=None) -> Any:
    """A dataclass field carrying its help text and constraints (checked by `Options.parse`).
    `check(value)` returns an error message (without the key) for what types and ranges cannot say."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open, "choices": choices,
            "check": check}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):  # a nested block's defaults
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata=meta)
    return field(default=default, metadata=meta)


@functools.lru_cache(maxsize=None)
def type_hints(cls) -> dict:
    """A dataclass's field annotations, evaluated (even under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def join_key(prefix: str, key: str) -> str:
    """`trainer` + `lr` -> `trainer.lr`; top-level keys (the job schema) have no prefix."""
    return f"{prefix}.{key}" if prefix else key


def closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _allowed_types(annotation) -> tuple[tuple, bool, tuple | None]:
    """(python types, None allowed, literal values) of a field annotation."""
    origin = get_origin(annotation)
    if origin is Literal:
        return (), False, get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds, literals, nullable = [], [], False
        for arg in get_args(annotation):
            if arg is type(None):
                nullable = True
                continue
            k, _, lit = _allowed_types(arg)
            kinds.extend(k)
            literals.extend(lit or ())
        return tuple(kinds), nullable, tuple(literals) or None
    if origin in (list, tuple) or annotation in (list, tuple):
        return (list, tuple), False, None
    if origin is dict or annotation is dict:
        return (dict,), False, None
    if annotation is float:
        return (int, float), False, None
    if annotation is Any:
        return (object,), True, None
    return (annotation,), False, None


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
               tuple: "a list", dict: "a mapping"}


def _describe(kinds: tuple, literals) -> str:
    if float in kinds:
        kinds = tuple(k for k in kinds if k is not int)
    names = [_KIND_NAMES.get(k, k.__name__) for k in kinds if k is not object]
    names += [repr(v) for v in literals or ()]
    return " or ".join(dict.fromkeys(names)) or "a value"


@dataclass
class Options:
    """Base of every typed option set: a method's options or one config group's schema."""

    # ---------------------------------------------------------------------------- parsing
    @classmethod
    def parse(cls, cfg, prefix: str):
        raw = _plain(cfg)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = type_hints(cls)
        for key in raw:
            if key not in fields:
                raise cls.unknown_key(prefix, str(key), raw)
        values = {}
        for name, f in fields.items():
            if name in raw:
                values[name] = _check(f, hints[name], raw[name], join_key(prefix, name))
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(join_key(prefix, name), "is required")
        opts = cls(**values)
        opts.check()
        return opts

    @classmethod
    def unknown_key(cls, prefix: str, key: str, raw: dict) -> ConfigError:
        keys = [f.name for f in dataclasses.fields(cls)]
        return ConfigError(join_key(prefix, key), f"is not a known key{closest(key, keys)}; known keys: {', '.join(sorted(keys))}")

    def check(self) -> None:
        """Checks across fields; raise ConfigError naming `<prefix>.<key>`."""

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access, so code written against the DictConfig keeps working."""
        return getattr(self, key, default)

    @classmethod
    def help(cls) -> list[tuple[str, str, Any, str]]:
        """(key, type, default, help) for every option: what `--cfg job`-style help prints."""
        rows, hints = [], typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else "(required)")
            if dataclasses.is_dataclass(default):
                default = dataclasses.asdict(default)
            rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
        return rows


@dataclass
class MethodOptions(Options):
    """Base of every method's options. `name` selects the method (conf/method/<name>.yaml)."""

    name: str = option(MISSING, "method module: a name registered in sparse_ft.methods")

    @classmethod
    def parse(cls, cfg, prefix: str = "method") -> "MethodOptions":
        return super().parse(cfg, prefix)

    @classmethod
    def unknown_key(cls, prefix: str, key: str, raw: dict) -> ConfigError:
        keys = [f.name for f in dataclasses.fields(cls)]
        return ConfigError(f"{prefix}.{key}", f"is not an option of method {raw.get('name')!r}{closest(key, keys)}; "
                           f"its options: {', '.join(sorted(keys))}")

    def check(self) -> None:
        """Checks across fields; raise ConfigError naming `method.<key>`."""


def _type_name(annotation) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(v) for v in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is not None:
        return str(annotation).replace("typing.", "")
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _plain(cfg) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    except ValueError:  # pragma: no cover - not an OmegaConf object
        return dict(cfg)


def _check(f: dataclasses.Field, annotation, value: Any, key: str) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, Options):  # a nested block (e.g. measurement)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(key, f"{value!r} is not a mapping")
        return annotation.parse(value, key)
    kinds, nullable, literals = _allowed_types(annotation)
    meta = f.metadata
    if value is None:
        if nullable:
            return None
        raise ConfigError(key, f"null is not allowed (expected {_describe(kinds, literals)})")
    choices = meta.get("choices") or literals
    if choices is not None and value in choices and not (isinstance(value, bool) and bool not in kinds and True not in choices):
        return value
    bool_ok = bool in kinds
    ok = any(isinstance(value, k) for k in kinds) and (bool_ok or not isinstance(value, bool))
    if not ok:
        if meta.get("choices") or (choices and not kinds):
            raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, choices))}")
        raise ConfigError(key, f"{value!r} is not {_describe(kinds, literals)}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, meta['choices']))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (value <= low if meta.get("low_open") else value < low):
            raise ConfigError(key, f"{value!r} must be {'>' if meta.get('low_open') else '>='} {low}")
        if high is not None and (value >= high if meta.get("high_open") else value > high):
            raise ConfigError(key, f"{value!r} must be {'<' if meta.get('high_open') else '<='} {high}")
    if meta.get("check") is not None:
        problem = meta["check"](value)
        if problem:
            raise ConfigError(key, problem)
    if annotation is float and isinstance(value, int):
        return float(value)
    return value

