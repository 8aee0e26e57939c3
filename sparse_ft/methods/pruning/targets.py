"""Which weights a pruning method may prune (`method.modules`).

Default (`modules: null`), the project decision of METHODS.md §3:
* a Hugging Face model: the weight of every `nn.Linear` inside a transformer block — a module
  below an element of an `nn.ModuleList` (BERT `encoder.layer.N`, T5 `encoder.block.N`, OPT
  `decoder.layers.N`) — so never embeddings, LayerNorm, biases, BERT's pooler, T5's LM head or the
  new task head;
* any other model (torchvision ResNet): the weight of every `nn.Conv2d` and `nn.Linear` except the
  new head (`fc`).

`modules: [regex, ...]`: the `nn.Linear` / `nn.Conv2d` modules whose qualified name matches any of
the regular expressions (`re.search`), e.g. `["attention", "intermediate"]` or
`["encoder\\.layer\\.(0|1)\\..*output\\.dense"]`. Every expression must match at least one
module, else the run stops naming `method.modules`.
"""

from __future__ import annotations

import re

from torch import nn

from ...core.errors import ConfigError
from ...models.heads import head_names

KINDS = (nn.Linear, nn.Conv2d)


def _block_prefixes(module: nn.Module) -> list[str]:
    prefixes = []
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList):
            prefixes.extend(f"{name}.{child}." if name else f"{child}." for child in m._modules)
    return prefixes


def _canonical(module: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in `named_parameters()` (a tied weight under its first name)."""
    return {id(p): n for n, p in module.named_parameters()}


def prunable(module: nn.Module, patterns=None, kinds=KINDS) -> dict[str, tuple[str, nn.Module]]:
    """{weight parameter name: (module name, module)} of the prunable weights, in module order."""
    canonical = _canonical(module)
    head = set(head_names(module))
    candidates = [(n, m) for n, m in module.named_modules() if isinstance(m, KINDS) and n]
    if patterns:
        chosen = set()
        for pat in patterns:
            try:
                rx = re.compile(str(pat))
            except re.error as err:
                raise ConfigError("method.modules", f"{pat!r} is not a regular expression: {err}") from err
            hits = [n for n, _ in candidates if rx.search(n)]
            if not hits:
                sample = ", ".join(n for n, _ in candidates[:4])
                raise ConfigError("method.modules", f"{pat!r} matches no nn.Linear / nn.Conv2d module of {type(module).__name__} (e.g. {sample})")
            chosen.update(hits)
        picked = [(n, m) for n, m in candidates if n in chosen]
    elif getattr(module, "config", None) is not None:
        blocks = _block_prefixes(module)
        picked = [(n, m) for n, m in candidates if isinstance(m, nn.Linear) and any(n.startswith(b) for b in blocks)]
    else:
        picked = candidates
    out: dict[str, tuple[str, nn.Module]] = {}
    for n, m in picked:
        w = getattr(m, "weight", None)
        if w is None or w.ndim < 2:
            continue
        if not isinstance(m, kinds):
            kind_names = "/".join(k.__name__ for k in kinds)
            raise ConfigError("method.modules", f"{n} is a {type(m).__name__}; this method prunes only {kind_names} weights")
        pname = canonical.get(id(w))
        if pname is None or (not patterns and pname in head):
            continue
        out.setdefault(pname, (n, m))
    if not out:
        what = f"method.modules={list(patterns)}" if patterns else "the default rule (nn.Linear inside transformer blocks; Conv2d/Linear except the head for other models)"
        raise ConfigError("method.modules", f"{what} selects no prunable weight in {type(module).__name__}")
    return out


def group_name(param_name: str) -> str:
    """A parameter name with its layer indices replaced by `*` (one row per module type)."""
    return re.sub(r"\.\d+\.", ".*.", param_name)
