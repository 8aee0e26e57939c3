"""A resume or relaunch continues a run only with that run's settings.

Before anything heavy loads (`RunContext.execute` calls these after validation):
- `completed_run(cfg, run_dir)`: relaunching a run directory that holds a completed run with
  `trainer.resume=auto` skips it when the settings are the same, and refuses (ConfigError, exit 2)
  naming every differing key otherwise;
- `check_resume(cfg, run_dir)`: a resume (auto from `<run dir>/checkpoints/last`, or
  `trainer.resume=<path>`) compares the checkpoint's resolved config with this one and refuses
  naming every differing key, unless `trainer.resume_force=true` (then the differences are
  recorded in summary.json `resume`).

`MAY_DIFFER` is the one list of keys that may differ (documented in the README's Resume section).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from ..core.errors import ConfigError
from ..core.nested import flatten

# key (or key prefix, ending in ".") -> when it may differ from the run it continues:
#   "always": how a run is watched, logged, checkpointed or where it writes; never what it computes
#   "resume": also when resuming an unfinished run (what is done after training)
#   "grow":   when resuming, to a value >= the run's (train longer)
MAY_DIFFER: dict[str, str] = {
    "trainer.resume": "always",
    "trainer.resume_force": "always",
    "trainer.checkpoint_every": "always",
    "trainer.log_every": "always",
    "trainer.progress": "always",
    "trainer.num_threads": "always",
    "trainer.dist_timeout_s": "always",
    "trainer.preempt_signals": "always",
    "logger.": "always",
    "energy.": "always",
    "output_root": "always",
    "run_dir": "always",  # in-process runs (tests) name their directory here
    "trainer.callbacks": "resume",  # user hooks (monitors, probes): the user answers for what they change
    "trainer.save_final": "resume",
    "trainer.measure_inference": "resume",
    "trainer.inference_examples": "resume",
    "trainer.max_steps": "grow",
    "trainer.epochs": "grow",
}
ABSENT = "<absent>"


def rule(key: str) -> str | None:
    for pattern, kind in MAY_DIFFER.items():
        if key == pattern or (pattern.endswith(".") and key.startswith(pattern)):
            return kind
    return None


def resolved(cfg) -> dict:
    """The job's config as config.yaml records it (resolved, without Hydra's own node)."""
    container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    container.pop("hydra", None)
    return container


def differences(old: dict, new: dict, resuming: bool) -> tuple[list[dict], list[dict]]:
    """(differing, allowed): every leaf key whose value differs, split by MAY_DIFFER."""
    a, b = flatten(old), flatten(new)
    differing, allowed = [], []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, ABSENT), b.get(key, ABSENT)
        if json.dumps(va, sort_keys=True, default=str) == json.dumps(vb, sort_keys=True, default=str):
            continue
        entry = {"key": key, "was": va, "now": vb}
        kind = rule(key)
        ok = kind == "always" or (resuming and kind == "resume")
        if resuming and kind == "grow":
            ok = isinstance(va, (int, float)) and isinstance(vb, (int, float)) and vb >= va
        (allowed if ok else differing).append(entry)
    return differing, allowed


def describe(entries: list[dict]) -> str:
    return "; ".join(f"{d['key']}: {d['was']!r} -> {d['now']!r}" for d in entries)


def find_resume(cfg, run_dir: Path) -> Path | None:
    """The checkpoint this train job continues from (None: it starts from scratch)."""
    from ..train.checkpoint import find_checkpoint

    mode = cfg.trainer.get("resume", "auto")
    if mode in (None, "never"):
        return None
    if mode == "auto":
        return find_checkpoint(run_dir)
    found = find_checkpoint(Path(str(mode)))
    if found is None:
        raise ConfigError("trainer.resume", f"no resumable checkpoint (checkpoints/last/manifest.json) at {mode}")
    return found


def checkpoint_config(checkpoint: Path) -> tuple[dict | None, str]:
    """The resolved config a checkpoint was written with: its manifest's `config`, else (older
    checkpoints) its run directory's config.yaml. Returns (config or None, where it was read).
    A damaged manifest raises CheckpointError naming it."""
    from ..train.checkpoint import read_manifest

    manifest = Path(checkpoint) / "manifest.json"
    data = read_manifest(checkpoint)
    if isinstance(data.get("config"), dict):
        return data["config"], str(manifest)
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "checkpoints":
        config_yaml = checkpoint.parent.parent / "config.yaml"
        if config_yaml.is_file():
            return resolved(OmegaConf.load(config_yaml)), str(config_yaml)
    return None, str(manifest)


def completed_run(cfg, run_dir: Path) -> float | None:
    """A completed run in `run_dir` relaunched with trainer.resume=auto: its main metric when the
    settings are the same (nothing trains again); ConfigError naming the differing keys otherwise."""
    if cfg.get("job", "train") != "train" or cfg.trainer.get("resume", "auto") != "auto":
        return None
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed":
        return None
    config_yaml = Path(run_dir) / "config.yaml"
    if not config_yaml.is_file():
        raise ConfigError("hydra.run.dir", f"{run_dir} holds a completed run without config.yaml: its settings cannot be compared; "
                                           "use another run directory (or trainer.resume=never to train over it)")
    differing, _ = differences(resolved(OmegaConf.load(config_yaml)), resolved(cfg), resuming=False)
    if differing:
        raise ConfigError("hydra.run.dir", f"{run_dir} holds a completed run with other settings, left unchanged: {describe(differing)}. "
                                           "Relaunch with its settings (nothing trains again), give this run another directory, "
                                           "or add trainer.resume=never to train over it")
    return (summary.get("metrics") or {}).get("main", float("nan"))


def check_resume(cfg, run_dir: Path) -> dict | None:
    """The train job's resume, checked before anything loads: None when it starts from scratch,
    else the summary's `resume` block {from, step, forced, differing, allowed}. Raises ConfigError
    naming every differing key unless trainer.resume_force=true."""
    if cfg.get("job", "train") != "train":
        return None
    checkpoint = find_resume(cfg, run_dir)
    if checkpoint is None:
        return None
    force = cfg.trainer.get("resume_force", False)
    if not isinstance(force, bool):
        raise ConfigError("trainer.resume_force", f"{force!r} must be true or false")
    old, where = checkpoint_config(checkpoint)
    new = resolved(cfg)
    if old is None:
        if not force:
            raise ConfigError("trainer.resume", f"{checkpoint}: no record of the settings it was written with (no config in {where}, "
                                                "no config.yaml in its run directory); add trainer.resume_force=true to resume it anyway")
        differing, allowed = [{"key": "<unknown>", "was": None, "now": None}], []
    else:
        differing, allowed = differences(old, new, resuming=True)
    if differing and not force:
        raise ConfigError("trainer.resume", f"{checkpoint} was written with other settings ({where}): {describe(differing)}. "
                                            "Resume with the checkpoint's settings, start over with trainer.resume=never, "
                                            "or add trainer.resume_force=true to resume with these")
    try:
        step = json.loads((Path(checkpoint) / "manifest.json").read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        step = None
    return {"from": str(checkpoint), "step": step, "forced": bool(force and differing), "differing": differing, "allowed": allowed}
