"""Method name (the `method.name` config key) → class. Modules register themselves on import."""

from __future__ import annotations

from ..config import ConfigError

_METHODS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        _METHODS[name] = cls
        return cls

    return deco


def method_class(name: str):
    from . import dense  # noqa: F401  (importing a module registers its methods)

    if name not in _METHODS:
        raise ConfigError("method.name", f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_method(cfg):
    cls = method_class(cfg.name)
    cls.validate(cfg)
    return cls(cfg)
