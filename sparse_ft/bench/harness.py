"""What every benchmark group shares: the composed config, MiniLM on real MRPC batches, and one
timed `Trainer.fit` of a method (seconds per optimizer step in the "train" telemetry phase)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
DEFAULT_GLUE = REPO.parent / "shared" / "data" / "glue"


def compose(overrides: list[str]):
    """The same config a `python run.py <overrides>` would get (without Hydra's run dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import sparse_ft.config.resolvers  # noqa: F401

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


class MiniLMOnMRPC:
    """MiniLM with real MRPC batches: the set-up every CPU benchmark of this project uses."""

    def __init__(self, data_dir: Path, batch_size: int, steps: int, method: str = "dense", extra: list[str] | None = None):
        from ..methods import build_method
        from ..models import build_model
        from ..tasks import load_task

        if not (data_dir / "MRPC" / "train.tsv").is_file():
            raise SystemExit(f"--glue-dir {data_dir}: no MRPC/train.tsv there (the benchmark uses the real MRPC files)")
        n = batch_size * steps
        self.cfg = compose(
            [
                "model=minilm", "task=mrpc", f"method={method}", f"task.data_dir={data_dir}",
                f"task.max_train_samples={n}", "task.max_eval_samples=32", f"trainer.batch_size={batch_size}",
                f"trainer.max_steps={steps}", f"trainer.log_every={steps}", "trainer.device=cpu", "energy=off",
                "trainer.select_best=false", "trainer.progress=false", *(extra or []),
            ]
        )
        torch.manual_seed(0)
        self.task = load_task(self.cfg.task, 0)
        self.bundle = build_model(self.cfg.model, self.task, max_length=128)
        self.features = {s: self.bundle.encode(self.task, s) for s in ("train", "validation")}
        self.initial = copy.deepcopy(self.bundle.module.state_dict())
        self.build_method = lambda: build_method(self.cfg.method)
        self.steps = steps

    def reset(self):
        self.bundle.module.load_state_dict(self.initial)
        self.bundle.module.zero_grad(set_to_none=True)


def fit_method(setup, method, run_dir: Path) -> tuple[float, object]:
    """Seconds per optimizer step inside Trainer.fit ("train" phase), and the trainer."""
    from ..methods import MethodContext
    from ..telemetry.resources import ResourceMonitor
    from ..train.trainer import Trainer

    setup.reset()
    for p in setup.bundle.module.parameters():
        p.requires_grad_(True)
    device = torch.device("cpu")
    resources = ResourceMonitor(device)
    ctx = MethodContext(
        run_dir=run_dir, device=device, seed=0, train_features=setup.features["train"], collate=setup.bundle.collate,
        loss=setup.bundle.loss, per_example_loss=setup.bundle.per_example_loss, logits=setup.bundle.logits, phase=resources.phase,
    )
    method.prepare(setup.bundle.module, ctx)
    trainer = Trainer(setup.cfg.trainer, setup.bundle, setup.task, method, setup.features, device, 0, phase=resources.phase)
    trainer.fit()
    return resources.seconds["train"] / setup.steps, trainer


