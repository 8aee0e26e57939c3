"""`model.drop_last_layers=N`: remove the last N transformer blocks of a loaded model (READ-large:
T5-large with its last 4 encoder and decoder layers dropped, METHODS.md §4).

Blocks are dropped from every stack the architecture has (BERT/RoBERTa encoder layers, OPT decoder
layers, T5 encoder and decoder blocks); the final layer norms and the head stay, and the model's
config says the new depth, so a saved checkpoint reloads with the same shapes.
"""

from __future__ import annotations

import logging

from torch import nn

from ..core.errors import ConfigError

log = logging.getLogger(__name__)

# (attribute path of a ModuleList of blocks, config key of its length)
_STACKS = (
    ("encoder.block", "num_layers"),                  # T5 encoder
    ("decoder.block", "num_decoder_layers"),          # T5 decoder
    ("encoder.layer", "num_hidden_layers"),           # BERT / RoBERTa (base model)
    ("model.decoder.layers", "num_hidden_layers"),    # OPT (for sequence classification)
    ("decoder.layers", "num_hidden_layers"),          # OPT (base model)
)


def _find(module: nn.Module, path: str):
    obj = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.ModuleList) else None


def _stacks(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(owner, attribute, config key) of each block list, looked up under the base model too."""
    roots = [module] + [getattr(module, a) for a in ("bert", "roberta", "base_model") if isinstance(getattr(module, a, None), nn.Module)]
    found, seen = [], set()
    for root in roots:
        for path, key in _STACKS:
            blocks = _find(root, path)
            if blocks is not None and id(blocks) not in seen:
                seen.add(id(blocks))
                owner = root
                for part in path.split(".")[:-1]:
                    owner = getattr(owner, part)
                found.append((owner, path.split(".")[-1], key))
    return found


def drop_last_layers(module: nn.Module, n: int) -> list[str]:
    """Drop the last n blocks of every stack; returns what was dropped, for the log."""
    stacks = _stacks(module)
    if not stacks:
        raise ConfigError("model.drop_last_layers", f"no transformer block list found in {type(module).__name__}")
    done = []
    for owner, attr, key in stacks:
        blocks = getattr(owner, attr)
        if n >= len(blocks):
            raise ConfigError("model.drop_last_layers", f"{n} would remove every one of the {len(blocks)} blocks of {attr}")
        setattr(owner, attr, nn.ModuleList(list(blocks)[: len(blocks) - n]))
        done.append(f"{type(owner).__name__}.{attr}: {len(blocks)} -> {len(blocks) - n}")
    config = getattr(module, "config", None)
    if config is not None:
        for key in {k for _, _, k in stacks}:
            if isinstance(getattr(config, key, None), int):
                setattr(config, key, getattr(config, key) - n)
    log.info("model.drop_last_layers=%d: %s", n, "; ".join(done))
    return done
