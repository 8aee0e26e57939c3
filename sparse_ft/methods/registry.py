"""Method name (the `method.name` config key) → class. Modules register themselves on import.
`parse_options` reads a `method:` group as one registered class's typed options (trainers and
compressors alike)."""

from __future__ import annotations

import logging

from ..core.errors import ConfigError
from ..core.options import MethodOptions, closest

log = logging.getLogger("sparse_ft.methods.base")  # the logger these notes always had

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


def parse_options(cls, cfg, note: bool = True) -> MethodOptions:
    """`cfg` (the `method:` group) as `cls.Options`. A key that belongs to another registered
    method is dropped with a note (logged when `note`: once per job, when the method is built, not
    again by `validate`), so one sweep can mix methods; any other unknown key is an error naming
    it and the closest valid one."""
    from omegaconf import DictConfig, OmegaConf

    own = set(cls.Options.__dataclass_fields__)
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    foreign = {}
    for key in raw:
        if key in own:
            continue
        owners = sorted(n for n, c in registered().items() if key in c.Options.__dataclass_fields__)
        if not owners:
            raise ConfigError(f"method.{key}", f"is not an option of method {raw.get('name')!r}{closest(key, own)}; its options: {', '.join(sorted(own))}")
        foreign[key] = owners
    for key, owners in foreign.items():
        if note:
            log.info("method.%s belongs to %s, not to %s: ignored in this job", key, "/".join(owners), raw.get("name"))
        raw.pop(key)
    return cls.Options.parse(raw)
