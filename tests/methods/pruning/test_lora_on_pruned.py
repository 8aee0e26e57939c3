"""LoRA on top of a pruned model keeps the sparsity when merged (methods/start.py):

    python run.py method=omp model=tiny_bert task=synthetic_nli method.sparsity=0.5 hydra.run.dir=<pruned>
    python run.py method=lora model=tiny_bert task=synthetic_nli method.init_from=<pruned>

The LoRA run starts from the pruned run's final weights; its merged checkpoint has its zeros
exactly where the pruned run's mask says (+0.0), the adapted weights did change on the kept
entries, the measured sparsity is the pruned run's, and the merged checkpoint scores what the
run evaluated (training saw the masked update, not a dense one).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose, run_inprocess

from sparse_ft.core.errors import ConfigError
from sparse_ft.methods.pruning.masks import MASK_FILE, load_masks

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=96", "task.max_eval_samples=64", "trainer.max_steps=3"]
FINAL = ("checkpoints", "final", "model.safetensors")


def _final(run):
    return load_file(str(run.joinpath(*FINAL)))


def test_lora_on_a_pruned_model_keeps_the_zeros_where_the_mask_says(tmp_path):
    pruned = tmp_path / "omp"
    s_omp = run_inprocess(pruned, [*TINY, "method=omp", "method.sparsity=0.5"])
    lora = tmp_path / "lora"
    s = run_inprocess(lora, [*TINY, "method=lora", f"method.init_from={pruned}", "trainer.lr=5e-2", "method.dropout=0.1"])
    assert s["status"] == "completed"

    keep = load_masks(pruned / MASK_FILE)
    assert torch.equal(torch.cat([k.flatten() for k in load_masks(lora / MASK_FILE).values()]),
                       torch.cat([k.flatten() for k in keep.values()]))  # the mask travels with the LoRA run
    before, after = _final(pruned), _final(lora)
    adapted = [n for n in keep if ".query." in n or ".value." in n]  # peft's default LoRA targets for BERT
    assert adapted and len(adapted) < len(keep)
    for name, k in keep.items():
        w = after[name]
        assert torch.all(w[~k] == 0) and not torch.any(torch.signbit(w[~k])), name  # exactly +0.0 where pruned
        if name in adapted:
            assert int((w[k] != before[name][k]).sum()) > 0.5 * int(k.sum()), name  # the merged update is there
        else:
            assert torch.equal(w, before[name]), name  # frozen, as loaded from the pruned run
    assert s["sparsity"]["overall"] == pytest.approx(s_omp["sparsity"]["overall"])  # measured on the merged weights
    assert s["method_report"]["start"]["init_from"] == str(pruned)

    # what was evaluated is what was saved: the merged checkpoint scores the run's final metrics
    e = run_inprocess(tmp_path / "eval", ["job=evaluate", f"source={lora}"])
    assert e["metrics"]["validation"] == s["metrics"]["validation"]


def test_the_trained_model_is_the_merged_one(tmp_path):
    """The wrapped model's forward (W + M ⊙ ΔW in the adapted layers) equals the plain model
    loaded with the merged export, with a nonzero update on every adapted weight."""
    from sparse_ft.methods.base import MethodContext
    from sparse_ft.methods.registry import build_method
    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    pruned = tmp_path / "omp"
    run_inprocess(pruned, [*TINY, "trainer.max_steps=1", "method=omp", "method.sparsity=0.7", "method.scope=layer"])
    cfg = compose([*TINY, "method=lora", f"method.init_from={pruned}", "method.r=4"])
    task = load_task(cfg.task, cfg.seed)
    torch.manual_seed(0)
    bundle = build_model(cfg.model, task, max_length=32)
    method = build_method(cfg.method)
    ctx = MethodContext(run_dir=tmp_path, device=torch.device("cpu"), seed=0, train_features=None, collate=None,
                        loss=None, model_cfg=cfg.model)
    wrapped = method.wrap(bundle, ctx).module
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.5)  # as after training: B·A ≠ 0, dense
    wrapped.eval()
    merged = method.export(wrapped)
    keep = load_masks(pruned / MASK_FILE)
    for prefix, layer in method._lora_layers():
        k = keep[f"{prefix}.weight"]
        assert torch.count_nonzero(layer.get_delta_weight("default")[~k]) > 0  # the plain merge would fill the holes
        assert torch.all(merged[f"{prefix}.weight"][~k] == 0)
    plain = build_model(cfg.model, task, max_length=32).module
    plain.load_state_dict(merged)
    plain.eval()
    ids = torch.randint(1000, 2000, (4, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        a, b = wrapped(**batch).logits, plain(**batch).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_init_from_bad_input_names_the_key(tmp_path):
    from sparse_ft.config.validation import validate

    with pytest.raises(ConfigError, match="method.init_from.*no such run directory"):  # before any model loads
        validate(compose([*TINY, "method=lora", f"method.init_from={tmp_path / 'missing'}"]))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(ConfigError, match="method.init_from.*no final weights"):
        validate(compose([*TINY, "method=lora", f"method.init_from={tmp_path / 'unfinished'}"]))
    pruned = tmp_path / "opt"
    run_inprocess(pruned, ["model=tiny_opt", "task=synthetic_nli", "task.max_train_samples=32", "task.max_eval_samples=32",
                           "trainer.max_steps=1", "method=omp"])
    with pytest.raises(SystemExit):
        run_inprocess(tmp_path / "y", [*TINY, "method=lora", f"method.init_from={pruned}"])
    error = json.loads((tmp_path / "y" / "summary.json").read_text())["error"]
    assert "method.init_from" in error and "'tiny_opt'" in error and "'tiny_bert'" in error


def test_a_finished_run_is_read_by_one_reader_for_init_from_and_source(tmp_path):
    """core/runs.py reads a run directory for both `method.init_from` (methods/start.py) and
    `source=` (config/source.py): a setting when readable, None when the config is not."""
    from sparse_ft.core.runs import final_weights, run_setting
    from sparse_ft.config.source import WEIGHTS, source_method
    from sparse_ft.methods.start import check_start

    run = tmp_path / "run"
    final_weights(run).parent.mkdir(parents=True)
    assert final_weights(run) == run / WEIGHTS
    (run / "config.yaml").write_text("model:\n  name: tiny_bert\nmethod:\n  name: magnitude\n")
    with pytest.raises(ConfigError, match="method.init_from.*no final weights"):
        check_start(run)
    final_weights(run).write_bytes(b"")
    assert check_start(run) == run
    assert run_setting(run, "model.name") == "tiny_bert" and source_method(run) == "magnitude"
    (run / "config.yaml").write_text("model: [unbalanced\n")
    assert run_setting(run, "model.name") is None and source_method(run) is None


def test_petl_imports_nothing_from_the_pruning_family():
    """A start from a finished run (weights and mask) is family-neutral (methods/start.py): no
    module of methods/petl imports methods/pruning, at module level or inside a function."""
    import ast
    from pathlib import Path

    import sparse_ft.methods.petl as petl

    found = []
    for path in sorted(Path(petl.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                if target.startswith("..pruning") or target.startswith("sparse_ft.methods.pruning"):
                    found.append(f"{path.name}:{node.lineno} {target}")
            elif isinstance(node, ast.Import):
                found += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("sparse_ft.methods.pruning")]
    assert found == []
