"""torchvision image classifiers (ResNet-34 for CIFAR-10, a tiny ResNet for tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet

from ..tasks.base import TaskData
from .bundle import ModelBundle
from .text import ModelLoadError


def _cifar_stem(net: nn.Module, width: int) -> None:
    # 32x32 inputs: a 7x7/2 conv + max-pool would leave 8x8 maps before the first stage
    net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()


def _small_resnet(layers, width: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet with BasicBlocks, but `width` channels in the first stage."""
    net = tv_resnet.ResNet(tv_resnet.BasicBlock, list(layers), num_classes=num_classes)
    if width == 64:
        return net
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(tv_resnet.BasicBlock, width, layers[0])
    net.layer2 = net._make_layer(tv_resnet.BasicBlock, width * 2, layers[1], stride=2)
    net.layer3 = net._make_layer(tv_resnet.BasicBlock, width * 4, layers[2], stride=2)
    net.layer4 = net._make_layer(tv_resnet.BasicBlock, width * 8, layers[3], stride=2)
    net.fc = nn.Linear(width * 8, num_classes)
    for m in net.modules():  # same init as torchvision's constructor
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return net


def build_module(model_cfg, num_classes: int) -> nn.Module:
    spec = str(model_cfg.name_or_path)
    if not spec.startswith("torchvision:"):
        raise ModelLoadError(f"model.name_or_path={spec}: vision models are named torchvision:<builder>")
    builder = spec.split(":", 1)[1]
    extra = dict(model_cfg.get("config") or {})
    if builder == "resnet":  # configurable small ResNet
        width = int(extra.get("width", 64))
        net = _small_resnet(extra.get("layers", [1, 1, 1, 1]), width, num_classes)
    else:
        fn = getattr(tv_resnet, builder, None) or getattr(__import__("torchvision.models", fromlist=[builder]), builder, None)
        if fn is None:
            raise ModelLoadError(f"model.name_or_path={spec}: torchvision has no model builder {builder!r}")
        weights = None if model_cfg.get("random_init", True) else model_cfg.get("weights")
        try:
            net = fn(weights=weights)
        except Exception as err:  # torchvision raises several types for unknown/unavailable weights
            raise ModelLoadError(f"model.weights={weights}: {err}") from err
        if net.fc.out_features != num_classes:
            net.fc = nn.Linear(net.fc.in_features, num_classes)
        width = net.conv1.out_channels
    if model_cfg.get("cifar_stem", False):
        _cifar_stem(net, width)
    return net


def collate_images(items) -> dict:
    xs, ys = zip(*items)
    return {"pixel_values": torch.stack(xs), "labels": torch.as_tensor(ys, dtype=torch.long)}


def image_logits(module, batch):
    return module(batch["pixel_values"])


def image_bundle(model_cfg, module: nn.Module, source: str, logits=image_logits, info: dict | None = None,
                 upcast: bool = False, newly_initialized: tuple[str, ...] = ()) -> ModelBundle:
    """An image classifier's bundle: its class scores are `logits(module, batch)` (`upcast`: cast
    to fp32 before the loss); the task's examples are its features; `newly_initialized`: the
    body's parameters the checkpoint did not hold."""

    def scores(mod, batch):
        out = logits(mod, batch)
        return out.float() if upcast else out

    def loss(mod, batch):
        return F.cross_entropy(scores(mod, batch), batch["labels"])

    def per_example(mod, batch):
        return F.cross_entropy(scores(mod, batch), batch["labels"], reduction="none")

    def predict(mod, batch):
        return logits(mod, batch).argmax(-1).cpu()

    return ModelBundle(
        name=model_cfg.name,
        arch="vision",
        module=module,
        source=source,
        encode=lambda task, split: task.splits[split],
        collate=collate_images,
        loss_fn=loss,
        predict_fn=predict,
        per_example_loss_fn=per_example,
        logits_fn=logits,
        info=dict(info or {}),
        newly_initialized=newly_initialized,
    )


def build_vision_bundle(model_cfg, task: TaskData) -> ModelBundle:
    return image_bundle(model_cfg, build_module(model_cfg, task.num_labels), str(model_cfg.name_or_path))
