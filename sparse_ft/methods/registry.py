"""Method name (the `method.name` config key) → class. Modules register themselves on import."""

from __future__ import annotations

from ..core.errors import ConfigError

_METHODS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        _METHODS[name] = cls
        return cls

    return deco


def _import_all() -> None:
    """Import every module of this package and its family folders: each registers its methods."""
    import importlib
    import pkgutil

    from .. import methods

    for info in pkgutil.walk_packages(methods.__path__, prefix=f"{methods.__name__}."):
        importlib.import_module(info.name)


def registered() -> dict[str, type]:
    """Every registered method, name → class (imports all method modules first)."""
    _import_all()
    return dict(sorted(_METHODS.items()))


def method_class(name: str):
    if name not in _METHODS:
        _import_all()
    if name not in _METHODS:
        raise ConfigError("method.name", f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_method(cfg):
    return method_class(cfg.name)(cfg)  # parsing the options validates them
