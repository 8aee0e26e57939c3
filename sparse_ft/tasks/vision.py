"""Image tasks: CIFAR-10 (torchvision) and scikit-learn's bundled 8x8 digits (offline).

Both give ``Dataset``s of ``(float tensor 3x32x32, int label)``, picklable for DataLoader workers.

* ``cifar10``: ``torchvision.datasets.CIFAR10(root, train, download=task.download)``. Splits
  ``train`` (50k) and ``validation`` = the official CIFAR-10 test set (10k), as the papers report;
  there is no separate test split. With ``augment``, training images get RandomCrop(32, padding=4)
  and RandomHorizontalFlip, then ToTensor + Normalize(CIFAR mean/std).
* ``digits``: ``sklearn.datasets.load_digits()`` (1,797 images), upsampled 8x8 -> 32x32 (bilinear),
  scaled to [0, 1], normalized with the train split's mean/std, repeated to 3 channels. A stratified
  split with the fixed seed 0 gives 80% ``train`` / 20% ``validation``; no test split, no flips
  (``augment`` only shifts by up to 2 pixels).

Caps (``max_train_samples`` / ``max_eval_samples``): the first n images after a shuffle with the
fixed seed 0 (CIFAR-10), or the first n of the already shuffled split (digits). Data never depends
on the run seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .base import CAP_SEED, DataError, TaskData
from .metrics import TaskMetric

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DIGITS_SPLIT_SEED = 0


def _cap_shuffled(ds, n: int | None):
    """First n items after a fixed-seed (0) shuffle; the dataset itself when n is None or >= len."""
    if n is None or n >= len(ds):
        return ds
    idx = np.random.default_rng(CAP_SEED).permutation(len(ds))[:n]
    return Subset(ds, idx.tolist())


def _cap_first(ds, n: int | None):
    if n is None or n >= len(ds):
        return ds
    return Subset(ds, list(range(n)))


def _image_task(name, label_names, splits, info) -> TaskData:
    metric = TaskMetric("accuracy")
    info["sizes"] = {k: len(v) for k, v in splits.items()}
    return TaskData(
        name=name,
        modality="image",
        problem="classification",
        label_names=list(label_names),
        splits=splits,
        train_split="train",
        eval_splits=["validation"],
        test_split=None,
        main_metric=metric.main_metric,
        metric_fn=metric,
        image_size=32,
        info=info,
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10


def image_transforms(side: int, mean, std, train: bool, augment: bool):
    """ToTensor + Normalize(mean, std); training images with `augment` first get RandomCrop(side,
    padding=4) and RandomHorizontalFlip."""
    from torchvision import transforms as T

    steps = []
    if train and augment:
        steps += [T.RandomCrop(side, padding=4), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def cifar10_transforms(train: bool, augment: bool):
    return image_transforms(32, CIFAR10_MEAN, CIFAR10_STD, train, augment)


def torchvision_splits(cls, task_cfg, transform, what: str, tarball: str, expected: str) -> dict:
    """`train` and `validation` (the official test set) of a torchvision CIFAR-style dataset class
    under `task.root`, `transform(train)` applied; missing or corrupt files (or a failed download)
    are a `DataError` saying how to get `tarball` and which files (`expected`, under the root) it holds."""
    root = Path(str(task_cfg.get("root") or "data"))
    download = bool(task_cfg.get("download", False))
    splits = {}
    for split, train in (("train", True), ("validation", False)):
        try:
            splits[split] = cls(str(root), train=train, download=download, transform=transform(train))
        except Exception as e:  # missing/corrupt files, or a failed download
            how = (
                f"the download failed (no internet?); fetch {tarball} from "
                "https://www.cs.toronto.edu/~kriz/cifar.html elsewhere and extract it there"
                if download
                else f"set task.download=true to fetch it (needs internet), or extract "
                f"{tarball} (https://www.cs.toronto.edu/~kriz/cifar.html) there"
            )
            raise DataError(
                f"{what} not found under task.root={root} (resolved {root.resolve()}; expected "
                f"{root / expected}): {how}; or point task.root at a folder that has it. ({type(e).__name__}: {e})"
            ) from e
    return splits


def finish_image_task(task_cfg, name, label_names, splits, info, side, mean, std) -> TaskData:
    """The TaskData of a fixed-split image task: caps (first n after a fixed-seed shuffle) and the
    info every such task records after its own (source, split scheme, augment)."""
    original = {k: len(v) for k, v in splits.items()}
    splits["train"] = _cap_shuffled(splits["train"], task_cfg.get("max_train_samples"))
    splits["validation"] = _cap_shuffled(splits["validation"], task_cfg.get("max_eval_samples"))
    info.update({
        "normalize": {"mean": list(mean), "std": list(std)},
        "original_sizes": original,
        "max_train_samples": task_cfg.get("max_train_samples"),
        "max_eval_samples": task_cfg.get("max_eval_samples"),
        "cap_rule": f"first n after a shuffle with fixed seed {CAP_SEED}",
    })
    task = _image_task(str(task_cfg.get("name", name)), label_names, splits, info)
    task.image_size = side
    return task


def load_cifar10(task_cfg, seed: int | None = None) -> TaskData:
    from torchvision.datasets import CIFAR10

    root = Path(str(task_cfg.get("root") or "data"))
    augment = bool(task_cfg.get("augment", True))
    splits = torchvision_splits(CIFAR10, task_cfg, lambda train: cifar10_transforms(train, augment), "CIFAR-10",
                                "cifar-10-python.tar.gz", "cifar-10-batches-py/data_batch_1 ... test_batch")
    info = {
        "source": f"torchvision CIFAR10 at {root.resolve()}",
        "split_scheme": "train = CIFAR-10 train (50k); validation = the official CIFAR-10 test set "
        "(10k), as in the papers; no separate test split",
        "augment": augment,
    }
    return finish_image_task(task_cfg, "cifar10", CIFAR10_CLASSES, splits, info, 32, CIFAR10_MEAN, CIFAR10_STD)


# --------------------------------------------------------------------------------------------
# digits


class TensorImageDataset(Dataset):
    """``(3xHxW float tensor, int label)`` from single-channel images held in memory.

    ``shift``: random translation by up to ``shift`` pixels (zero padding), drawn from torch's
    global RNG (seeded per run / per DataLoader worker) — used for training augmentation only.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0):
        assert images.ndim == 4 and images.shape[1] == 1, images.shape
        self.images, self.labels, self.shift = images.contiguous(), labels.long(), int(shift)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        if self.shift:
            s = self.shift
            dy, dx = torch.randint(-s, s + 1, (2,)).tolist()
            padded = torch.nn.functional.pad(x, (s, s, s, s))
            h, w = x.shape[-2:]
            x = padded[:, s + dy : s + dy + h, s + dx : s + dx + w]
        return x.repeat(3, 1, 1), int(self.labels[i])


def _digits_arrays():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8) in [0,1]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0)
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=0.2, random_state=DIGITS_SPLIT_SEED, stratify=bunch.target)
    return x, y, tr, va


def load_digits_task(task_cfg, seed: int | None = None) -> TaskData:
    x, y, tr, va = _digits_arrays()
    mean, std = float(x[tr].mean()), float(x[tr].std())
    x = (x - mean) / std
    augment = bool(task_cfg.get("augment", False))
    splits = {
        "train": TensorImageDataset(x[tr], y[tr], shift=2 if augment else 0),
        "validation": TensorImageDataset(x[va], y[va]),
    }
    original = {k: len(v) for k, v in splits.items()}
    splits["train"] = _cap_first(splits["train"], task_cfg.get("max_train_samples"))
    splits["validation"] = _cap_first(splits["validation"], task_cfg.get("max_eval_samples"))
    info = {
        "source": "sklearn.datasets.load_digits (bundled, 1797 images 8x8 -> 32x32 bilinear, 3 channels)",
        "split_scheme": f"stratified 80% train / 20% validation (fixed seed {DIGITS_SPLIT_SEED}); no test split",
        "normalize": {"mean": mean, "std": std},
        "augment": augment,
        "original_sizes": original,
        "max_train_samples": task_cfg.get("max_train_samples"),
        "max_eval_samples": task_cfg.get("max_eval_samples"),
        "cap_rule": "first n of the (already shuffled) split",
    }
    return _image_task(str(task_cfg.get("name", "digits")), [str(i) for i in range(10)], splits, info)
