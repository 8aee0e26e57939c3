"""The GPU check: a few short jobs on one CUDA GPU, each alone in a fresh process, and one JSON of
figures. `scripts/gpu_check.sh` runs it on a machine whose Python has torch and transformers (the
other dependencies travel as wheels: `scripts/gpu_prepare.sh`); `--dry-run` runs the same jobs on
CPU with tiny models and a couple of steps (what the tests run).

    python -m sparse_ft.bench.gpu_check --out outputs/gpu_check [--dry-run] [--only NAME ...] [--plan]

Jobs (GPU settings; ~4-5 min in all on one A100/H100-class GPU, under 8 with model start-up):
- `quickstart_nvml`, `quickstart_nvidia_smi`: the offline quickstart (FISH 0.5% on the bundled MiniLM,
  generated NLI task, one epoch) with `energy=nvml` and with `energy=nvidia_smi`: both kWh estimates side by side;
- `minilm_{dense,fish}_{fp32,bf16}`: dense vs FISH 0.5% on MiniLM, batch 32, 60 optimizer steps, bf16
  autocast off and on: seconds per step (train phase) and `max_memory_allocated` of the train phase;
- `t5base_{dense,read,lora}`: training memory on T5-base shapes (random init), batch 8, length 128,
  AdamW, 5 steps: `max_memory_allocated` per phase and the ratio to dense.

The printed JSON (also `<out>/gpu_check.json`): `device`, `torch`, `jobs` (each job's status, error,
energy, memory and time figures), `ratios` (FISH / dense step time and memory per precision; READ and
LoRA / dense train memory on T5-base shapes), `wall_s`. Each job runs `python run.py ...` with
`measurement.alone=true` and the report callback off (the GPU machine needs no plotting stack).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

COMMON = ["trainer.progress=false", "logger=none", "~hydra.callbacks.report", "measurement.alone=true", "trainer.save_final=false",
          "trainer.checkpoint_every=0"]


def jobs(dry_run: bool, mrpc: bool) -> dict[str, list[str]]:
    """name -> overrides (GPU settings, or tiny CPU ones for a dry run)."""
    device = "trainer.device=cpu" if dry_run else "trainer.device=cuda"
    if dry_run:
        quick = ["model=tiny_bert", "task.max_train_samples=64", "task.max_eval_samples=16", "trainer.max_steps=2", "method.num_samples=32"]
        minilm = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16", "trainer.batch_size=8",
                  "trainer.max_steps=2"]
        t5 = ["model=tiny_t5", "task=synthetic_nli", "task.max_train_samples=32", "task.max_eval_samples=8", "trainer.batch_size=8",
              "trainer.max_steps=2"]
    else:
        quick = []
        minilm = ["model=minilm", "task=synthetic_nli", "task.max_length=128", "task.max_eval_samples=256", "trainer.batch_size=32",
                  "trainer.max_steps=60", "trainer.eval_every=0"]
        # MRPC's real sentence pairs where its metric (scikit-learn's F1) can be imported, else the generated task at length 128
        t5 = ["model=t5_base_shapes", *(["task=mrpc", f"task.data_dir={REPO.parent / 'shared' / 'data' / 'glue'}"] if mrpc else
                                        ["task=synthetic_nli", "task.max_length=128"]),
              "task.max_eval_samples=16", "trainer.batch_size=8", "trainer.eval_batch_size=8", "trainer.max_steps=5"]
    out = {
        "quickstart_nvml": ["experiment=quickstart", *quick, "energy=nvml"],
        "quickstart_nvidia_smi": ["experiment=quickstart", *quick, "energy=nvidia_smi"],
    }
    for precision in ("fp32", "bf16"):
        out[f"minilm_dense_{precision}"] = [*minilm, "method=dense", "trainer.lr=5e-5", f"trainer.precision={precision}", "energy=off"]
        out[f"minilm_fish_{precision}"] = [*minilm, "method=fish", "method.density=0.005", "trainer.lr=1e-3", f"trainer.precision={precision}",
                                           "energy=off", *(["method.num_samples=32"] if dry_run else [])]
    for method in ("dense", "read", "lora"):
        out[f"t5base_{method}"] = [*t5, f"method={method}", "trainer.lr=1e-4", "energy=off"]
    return {name: [*overrides, device, *COMMON] for name, overrides in out.items()}


def _figures(summary: dict) -> dict:
    mem, tm = summary.get("memory") or {}, summary.get("time") or {}
    steps = tm.get("steps") or 0
    train_s = (tm.get("wall_s") or {}).get("train")
    energy = summary.get("energy") or {}
    return {
        "status": summary.get("status"), "error": summary.get("error"),
        "memory_measure": mem.get("measure"), "peak_bytes": mem.get("peak_bytes"),
        "train_s_per_step": train_s / steps if train_s and steps else None, "steps": steps,
        "train_samples_per_s": tm.get("train_samples_per_s"),
        "energy": {k: energy.get(k) for k in ("available", "reason", "backend", "kwh_counter", "kwh_power_integral", "kwh_util_estimate")},
        "energy_train": (energy.get("phases") or {}).get("train"),
        "main": (summary.get("metrics") or {}).get("main"),
        "measurement": summary.get("measurement"),
    }


def _ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def ratios(results: dict) -> dict:
    def train_peak(name):
        return ((results.get(name) or {}).get("peak_bytes") or {}).get("train")

    out = {}
    for precision in ("fp32", "bf16"):
        d, f = results.get(f"minilm_dense_{precision}") or {}, results.get(f"minilm_fish_{precision}") or {}
        out[f"fish_over_dense_step_time_{precision}"] = _ratio(f.get("train_s_per_step"), d.get("train_s_per_step"))
        out[f"fish_over_dense_train_memory_{precision}"] = _ratio(train_peak(f"minilm_fish_{precision}"), train_peak(f"minilm_dense_{precision}"))
    for method in ("read", "lora"):
        out[f"t5base_{method}_over_dense_train_memory"] = _ratio(train_peak(f"t5base_{method}"), train_peak("t5base_dense"))
    return out


def can_import(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"), help="run directories and gpu_check.json go here")
    parser.add_argument("--dry-run", action="store_true", help="the same jobs on CPU with tiny models and 2 steps")
    parser.add_argument("--only", action="append", help="run only this job (repeatable)")
    parser.add_argument("--plan", action="store_true", help="print each job's command, run nothing")
    parser.add_argument("--timeout", type=float, default=420.0, help="stop starting jobs after this many seconds (the 8-minute budget)")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.plan:
        import torch

        if not torch.cuda.is_available():
            print(json.dumps({"available": False, "reason": "no CUDA device (torch.cuda.is_available() is False): use --dry-run on CPU"}))
            return 2
    planned = jobs(args.dry_run, can_import("sklearn"))
    unknown = sorted(set(args.only or []) - set(planned))
    if unknown:
        parser.error(f"--only {unknown}: not one of {sorted(planned)}")
    chosen = {k: v for k, v in planned.items() if not args.only or k in args.only}
    started = time.monotonic()
    results: dict = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    for name, overrides in chosen.items():
        run_dir = (args.out / name).resolve()
        cmd = [sys.executable, str(REPO / "run.py"), *overrides, f"hydra.run.dir={run_dir}", "trainer.resume=never"]
        if args.plan:
            print(" ".join(cmd[1:]))
            continue
        if time.monotonic() - started > args.timeout:
            results[name] = {"status": "skipped", "error": f"time budget of {args.timeout:.0f} s spent"}
            continue
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {"status": "failed", "error": f"exit {proc.returncode}, no summary.json: {proc.stderr[-1500:]}"}
        results[name] = {**_figures(summary), "exit_code": proc.returncode, "process_s": round(time.monotonic() - t0, 1)}
    if args.plan:
        return 0
    import torch

    report = {
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "jobs": results, "ratios": ratios(results), "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, default=str)
    (args.out / "gpu_check.json").write_text(text + "\n")
    print(text)
    return 0 if all(r.get("status") == "completed" for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
