"""Tiny generated copies of CIFAR-100 and Tiny-ImageNet in their official on-disk layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def make_cifar100(root: Path, n_train: int = 24, n_test: int = 12, classes: int = 100) -> Path:
    """root/cifar-100-python/{train,test,meta}: pickles as the official tarball holds them
    (rows of 3072 uint8, channel-major; `fine_labels`, `coarse_labels`; meta `fine_label_names`)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [i % classes for i in range(n)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        # class-dependent red channel so a model can learn something
        for i, y in enumerate(fine):
            data[i, :1024] = (y * 37) % 256
        entry = {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{name} batch",
                 "fine_labels": fine, "coarse_labels": [y // 5 for y in fine], "data": data}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i:03d}" for i in range(classes)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return root


def make_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class: int = 3, val_per_class: int = 2) -> Path:
    """root/tiny-imagenet-200: wnids.txt, words.txt, train/<wnid>/images/<wnid>_<i>.JPEG with
    train/<wnid>/<wnid>_boxes.txt, val/images/val_<i>.JPEG + val/val_annotations.txt, test/images."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))  # official file is not sorted
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))

    def img(label: int, gray: bool = False) -> Image.Image:
        a = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        a[..., 0] = label * 80
        im = Image.fromarray(a)
        return im.convert("L") if gray else im  # a few official images are greyscale

    for c, w in enumerate(wnids):
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i in range(per_class):
            img(c, gray=(i == 0)).save(folder / f"{w}_{i}.JPEG", format="JPEG")
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t63\t63")
        (base / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    lines, k = [], 0
    for c, w in enumerate(wnids):
        for _ in range(val_per_class):
            img(c).save(base / "val" / "images" / f"val_{k}.JPEG", format="JPEG")
            lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
            k += 1
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    img(0).save(base / "test" / "images" / "test_0.JPEG", format="JPEG")
    return root
