"""Method name (the `method.name` config key) → class. Modules register themselves on import."""

from __future__ import annotations

from ..config import ConfigError

_METHODS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        _METHODS[name] = cls
        return cls

    return deco


def _import_all() -> None:
    """Import every module of this package: each registers its methods with @register."""
    import importlib
    import pkgutil

    from .. import methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")


def method_class(name: str):
    if name not in _METHODS:
        _import_all()
    if name not in _METHODS:
        raise ConfigError("method.name", f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_method(cfg):
    cls = method_class(cfg.name)
    cls.validate(cfg)
    return cls(cfg)
