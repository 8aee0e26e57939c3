"""The Essential Sparsity paper's other image tasks: CIFAR-100 and Tiny-ImageNet.

Both give ``Dataset``s of ``(float tensor 3xHxW normalised with the task's mean/std, int label)``
like ``vision.py``; ``task.info["normalize"]`` holds that mean/std so a model with its own input
convention (ViT / DINO, ``models/hf_vision.py``) can undo it.

* ``cifar100``: ``torchvision.datasets.CIFAR100(task.root, train, download=task.download)``, the
  100 fine labels. ``train`` (50k) and ``validation`` = the official test set (10k), as the papers
  report. Same rules as CIFAR-10: missing files fail with a how-to, never another dataset.
  ``task.verify_md5=false`` skips torchvision's checksum of the three files (a locally generated
  copy in the official pickle layout, as the tests use); the real files pass it.
* ``tiny_imagenet``: 200 classes of 64x64 images. From ``task.data_dir``, the official
  ``tiny-imagenet-200`` folder (``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG``
  + ``val/val_annotations.txt``), or, with ``task.data_dir=null``, the Hugging Face dataset
  ``task.hf_dataset`` (splits ``train`` / ``valid`` (or ``validation``), columns ``image`` / ``label``
with the class names in the label feature). ``train``
  (100k) and ``validation`` = the official val set (10k; the official test set has no labels).
  Classes are the wnids in sorted order (as torchvision's ImageFolder orders them).

With ``augment``, training images get RandomCrop(side, padding=4) + RandomHorizontalFlip (the
CIFAR-10 recipe at each task's side length). Caps: the first n after a shuffle with fixed seed 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import Dataset

from .base import DataError, TaskData
from .vision import finish_image_task, image_transforms, torchvision_splits

logger = logging.getLogger(__name__)

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)


# --------------------------------------------------------------------------------------------
# CIFAR-100


def _cifar100_class(verify_md5: bool):
    from torchvision.datasets import CIFAR100

    if verify_md5:
        return CIFAR100

    class UncheckedCIFAR100(CIFAR100):  # the files must exist; their checksums are not compared
        train_list = [[name, None] for name, _ in CIFAR100.train_list]
        test_list = [[name, None] for name, _ in CIFAR100.test_list]
        meta = {**CIFAR100.meta, "md5": None}

    return UncheckedCIFAR100


def load_cifar100(task_cfg, seed: int | None = None) -> TaskData:
    root = Path(str(task_cfg.get("root") or "data"))
    augment = bool(task_cfg.get("augment", True))
    verify = bool(task_cfg.get("verify_md5", True))
    splits = torchvision_splits(_cifar100_class(verify), task_cfg,
                                lambda train: image_transforms(32, CIFAR100_MEAN, CIFAR100_STD, train, augment),
                                "CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python/train, test, meta")
    classes = list(splits["train"].classes)
    info = {
        "source": f"torchvision CIFAR100 at {root.resolve()}" + ("" if verify else " (md5 not verified: task.verify_md5=false)"),
        "split_scheme": "train = CIFAR-100 train (50k); validation = the official CIFAR-100 test set (10k), "
        "as in the papers; no separate test split; 100 fine labels",
        "augment": augment,
    }
    return finish_image_task(task_cfg, "cifar100", classes, splits, info, 32, CIFAR100_MEAN, CIFAR100_STD)


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet


class ImageFiles(Dataset):
    """(transformed RGB image, label) from a list of (path, label); opened lazily with PIL."""

    def __init__(self, items: list[tuple[str, int]], transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


class HFImages(Dataset):
    """(transformed RGB image, label) from a Hugging Face dataset with `image` / `label` columns."""

    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        row = self.ds[int(i)]
        return self.transform(row["image"].convert("RGB")), int(row["label"])


def tiny_imagenet_root(data_dir) -> Path:
    """The folder holding wnids.txt: data_dir itself or its tiny-imagenet-200/ subfolder."""
    root = Path(str(data_dir))
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    return root


def _tiny_imagenet_local(task_cfg, augment):
    root = tiny_imagenet_root(task_cfg.get("data_dir"))
    how = (f"task.data_dir={task_cfg.get('data_dir')} should be the official tiny-imagenet-200 folder "
           "(http://cs231n.stanford.edu/tiny-imagenet-200.zip): wnids.txt, train/<wnid>/images/*.JPEG, "
           "val/images/*.JPEG, val/val_annotations.txt; or set task.data_dir=null to use task.hf_dataset")
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(f"{wnids_file}: missing; {how}")
    wnids = sorted({w.strip() for w in wnids_file.read_text().splitlines() if w.strip()})
    if not wnids:
        raise DataError(f"{wnids_file}: lists no class; {how}")
    index = {w: i for i, w in enumerate(wnids)}
    train = []
    for w in wnids:
        folder = root / "train" / w / "images"
        files = sorted(folder.glob("*.JPEG")) if folder.is_dir() else []
        if not files:
            raise DataError(f"{folder}: no *.JPEG images for class {w} listed in {wnids_file}; {how}")
        train += [(str(f), index[w]) for f in files]
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"{ann}: missing (it maps each val image to its wnid); {how}")
    val = []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"{ann}:{n}: expected '<file>\\t<wnid>\\t...' with a wnid from {wnids_file}, got {line[:80]!r}")
        path = root / "val" / "images" / parts[0]
        if not path.is_file():
            raise DataError(f"{ann}:{n}: {path} does not exist; {how}")
        val.append((str(path), index[parts[1]]))
    tf = lambda train_: image_transforms(64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, train_, augment)  # noqa: E731
    splits = {"train": ImageFiles(train, tf(True)), "validation": ImageFiles(val, tf(False))}
    return splits, wnids, f"local folder {root.resolve()}"


def _tiny_imagenet_hf(task_cfg, augment):
    name = task_cfg.get("hf_dataset")
    try:
        from datasets import load_dataset

        ds = load_dataset(name)
    except Exception as err:
        raise DataError(f"task.hf_dataset={name}: could not be loaded ({type(err).__name__}: {err}); "
                        "set task.data_dir to the official tiny-imagenet-200 folder instead") from err
    tf = lambda train_: image_transforms(64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, train_, augment)  # noqa: E731
    val = "valid" if "valid" in ds else "validation"  # zh-plus/tiny-imagenet names it "valid"
    missing = [s for s in ("train", val) if s not in ds]
    if missing:
        raise DataError(f"task.hf_dataset={name}: has no split {missing[0]!r} (expected train and valid or validation; "
                        f"it has {sorted(ds)})")
    names = list(ds["train"].features["label"].names)
    return {"train": HFImages(ds["train"], tf(True)), "validation": HFImages(ds[val], tf(False))}, names, f"Hugging Face dataset {name}"


def load_tiny_imagenet(task_cfg, seed: int | None = None) -> TaskData:
    augment = bool(task_cfg.get("augment", True))
    if task_cfg.get("data_dir") is not None:
        splits, classes, source = _tiny_imagenet_local(task_cfg, augment)
    else:
        splits, classes, source = _tiny_imagenet_hf(task_cfg, augment)
    info = {
        "source": source,
        "split_scheme": "train = Tiny-ImageNet train; validation = the official val set (the test set has no labels); "
        "classes = the wnids, sorted",
        "augment": augment,
    }
    return finish_image_task(task_cfg, "tiny_imagenet", classes, splits, info, 64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
