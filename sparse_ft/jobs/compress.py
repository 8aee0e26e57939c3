"""`job=compress method=<compressor> source=<run dir>`: compress a finished run's fine-tuned weights
θ' against its base θ (rebuilt as the source run built it), evaluate the reconstruction with the
shared evaluator, and report the artifact's bytes next to the score the source run had, and the
reconstruction's fidelity to θ' (summary.json `fidelity`: agreement of argmax predictions and the
mean KL(p_θ' ‖ p_reconstruction) on the selection split)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..core.accounting import dense_fp32_bytes, storage_block
from ..models.bundle import to_device
from ..methods import build_method
from ..methods.compress.base import CompressContext
from ..models.heads import head_names
from ..train import distributed as D
from ..train.evaluator import Evaluator
from .context import RunContext, seed_everything
from .data import build_setup
from .evaluate import load_weights_into
from ..config.source import source_summary, weights_of

log = logging.getLogger("sparse_ft.jobs.entry")


def split_logits(bundle, data, batch_size: int, device) -> np.ndarray:
    """Class logits (n, C) of `bundle.module` on a whole feature split, in order (float64)."""
    module = bundle.module
    was_training = module.training
    module.eval()
    out = []
    with torch.inference_mode():
        for batch in DataLoader(data, batch_size=int(batch_size), shuffle=False, collate_fn=bundle.collate):
            out.append(bundle.logits(to_device(batch, device)).detach().to("cpu", torch.float64).numpy())
    module.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


def output_fidelity(reference: np.ndarray, other: np.ndarray) -> dict:
    """How closely `other` logits reproduce `reference` (θ''s): the share of examples whose argmax
    agrees, and the mean KL(p_reference ‖ p_other) of their softmax distributions in nats."""
    ref = torch.log_softmax(torch.as_tensor(reference, dtype=torch.float64), dim=-1)
    oth = torch.log_softmax(torch.as_tensor(other, dtype=torch.float64), dim=-1)
    kl = (ref.exp() * (ref - oth)).sum(-1)
    return {"agreement": float((ref.argmax(-1) == oth.argmax(-1)).double().mean()) if len(ref) else None,
            "kl_mean": float(kl.mean()) if len(ref) else None, "kl_max": float(kl.max()) if len(ref) else None,
            "examples": int(len(ref))}


def compress_job(rc: RunContext) -> float | None:
    cfg, summary = rc.cfg, rc.summary
    path = weights_of(cfg)
    source = source_summary(Path(str(cfg.source)))
    summary["source"] = {"path": str(cfg.source), "method": source.get("method")}  # the method is the compressor
    dist_info, device = D.setup(cfg.trainer.device, float(cfg.trainer.get("dist_timeout_s", 300)))
    with rc.monitored(device) as telemetry:
        seed_everything(cfg.seed)  # the source run's seed: the same base (and new-head init) as it had
        method = build_method(cfg.method)
        setup = build_setup(cfg, telemetry, device)
        summary["data"] = {**setup.task.sizes(), "majority_class_score": setup.task.majority_class_scores()}
        module = setup.bundle.module
        base = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        dense_bytes = dense_fp32_bytes(module)
        load_weights_into(module, path)  # checks the keys
        tuned = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        context = CompressContext(
            new_keys=frozenset(head_names(module)),  # a new head has no pretrained counterpart
            base_identity={"model": cfg.model.get("name"), "name_or_path": cfg.model.get("name_or_path"),
                           "revision": cfg.model.get("revision"), "random_init": bool(cfg.model.get("random_init")), "seed": cfg.seed})
        with telemetry.phase("compress"):
            result = method.compress(base, tuned, rc.run_dir, context)
        missing = set(tuned) - set(result.reconstructed)
        if missing:
            raise RuntimeError(f"{method.name}: the reconstruction lacks {sorted(missing)[:5]}")
        # fidelity: the reconstruction's class distributions against θ''s on the selection split
        split = setup.task.eval_splits[0]
        fidelity_ref, fidelity_why = None, None
        if setup.bundle.logits_fn is None or setup.task.problem != "classification":
            fidelity_why = "no class logits (text-to-text model or a regression task)"
        elif dist_info.enabled:
            fidelity_why = "not measured under torchrun"
        else:
            with telemetry.phase("eval"):
                fidelity_ref = split_logits(setup.bundle, setup.features[split], cfg.trainer.eval_batch_size, device)
        module.load_state_dict(result.reconstructed)
        if fidelity_ref is not None:
            with telemetry.phase("eval"):
                fid = output_fidelity(fidelity_ref, split_logits(setup.bundle, setup.features[split], cfg.trainer.eval_batch_size, device))
            summary["fidelity"] = {"split": split, **fid}
        else:
            summary["fidelity"] = {"split": split, "reason": fidelity_why}
        evaluator = Evaluator(setup.bundle, setup.task, setup.features, device, cfg.trainer.eval_batch_size, dist_info)
        with telemetry.phase("eval"):
            final = evaluator.final_metrics()
        rc.writer.log_metrics({"type": "final", "step": 0, **final})
        source_main = (source.get("metrics") or {}).get("main")
        summary["metrics"] = final
        summary["source"].update(main=source_main, score_drop=None if source_main is None else source_main - final["main"])
        summary["storage"] = storage_block(rc.run_dir, dense_bytes, result.artifacts)
        summary["method_report"] = result.report
        summary["params"] = {"total": sum(p.numel() for p in module.parameters()), "trainable": 0, "updated": None, "added": 0}
        summary["time"] = rc.time_block(0, 0, 0, 0)
        summary["memory"] = telemetry.resources.memory_block()
        ratio = sum(result.artifacts.values()) / dense_bytes if dense_bytes else None
        log.info("compressed %s with %s: %s %.4f (source %s), %.2f%% of dense fp32", cfg.source, method.name,
                 setup.task.main_metric, final["main"], source_main, 100 * (ratio or 0))
        return float(final["main"])

