"""ViT / DINO image classifiers (transformers) and the CIFAR-100 / Tiny-ImageNet tasks (issue 23, part 1).

Every run uses the random-init `tiny_vit` and fixtures generated in the official on-disk layouts
(tests/vision_fixtures.py): no download."""

import json

import numpy as np
import pytest
import torch
from conftest import compose, run_inprocess
from omegaconf import OmegaConf
from safetensors.torch import load_file
from vision_fixtures import make_cifar100, make_tiny_imagenet

from sparse_ft.config.validation import ConfigError, validate
from sparse_ft.tasks import DataError, load_task


def cifar100_cfg(root, **over):
    cfg = compose(["task=cifar100", f"task.root={root}", *[f"task.{k}={v}" for k, v in over.items()]]).task
    return cfg


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp("c100"))


@pytest.fixture(scope="module")
def tiny_imagenet_root(tmp_path_factory):
    return make_tiny_imagenet(tmp_path_factory.mktemp("tin"))


def test_cifar100_reads_the_official_pickles(cifar100_root):
    task = load_task(cifar100_cfg(cifar100_root, verify_md5="false", augment="false"), seed=0)
    assert task.modality == "image" and task.num_labels == 100 and task.label_names[7] == "class007"
    assert task.sizes() == {"train": 24, "validation": 12}
    x, y = task.splits["train"][5]  # row 5: fine label 5, red channel (5*37)%256
    assert x.shape == (3, 32, 32) and y == 5
    mean, std = task.info["normalize"]["mean"], task.info["normalize"]["std"]
    assert torch.allclose(x[0] * std[0] + mean[0], torch.full((32, 32), 185 / 255), atol=1e-5)


def test_cifar100_checks_md5_by_default_and_names_the_root(cifar100_root, tmp_path):
    with pytest.raises(DataError, match="task.root") as err:  # generated files never pass torchvision's checksums
        load_task(cifar100_cfg(cifar100_root), seed=0)
    assert "cifar-100-python" in str(err.value) and "task.download=true" in str(err.value)
    with pytest.raises(DataError, match=str(tmp_path)):
        load_task(cifar100_cfg(tmp_path, verify_md5="false"), seed=0)


def test_tiny_imagenet_reads_the_official_folder(tiny_imagenet_root):
    cfg = compose(["task=tiny_imagenet", f"task.data_dir={tiny_imagenet_root}", "task.augment=false"]).task
    task = load_task(cfg, seed=0)
    assert task.label_names == ["n01443537", "n01629819", "n01641577"]  # sorted, whatever wnids.txt's order
    assert task.sizes() == {"train": 9, "validation": 6} and task.image_size == 64
    labels = [task.splits["validation"][i][1] for i in range(6)]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]  # from val_annotations.txt
    x, y = task.splits["train"][0]  # a greyscale JPEG comes out as 3 channels
    assert x.shape == (3, 64, 64)


def test_tiny_imagenet_bad_folders_name_the_file(tiny_imagenet_root, tmp_path):
    with pytest.raises(ConfigError, match="task.data_dir"):
        validate(compose(["model=tiny_vit", "task=tiny_imagenet", f"task.data_dir={tmp_path / 'nope'}"]))
    with pytest.raises(DataError, match="wnids.txt"):
        load_task(compose(["task=tiny_imagenet", f"task.data_dir={tmp_path}"]).task, seed=0)
    broken = make_tiny_imagenet(tmp_path / "b") / "tiny-imagenet-200"
    (broken / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:1"):
        load_task(compose(["task=tiny_imagenet", f"task.data_dir={broken}"]).task, seed=0)


def test_pixels_are_unnormalised_resized_and_renormalised():
    """The checkpoint sees (x01 - mean_p) / std_p at its own size, x01 the task's [0, 1] image."""
    from types import SimpleNamespace

    from sparse_ft.models.hf_vision import PixelPrep

    task = SimpleNamespace(info={"normalize": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 0.2]}})
    x01 = torch.rand(2, 3, 8, 8)
    xt = (x01 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 0.2]).view(1, 3, 1, 1)
    spec = {"size": (8, 8), "resample": 2, "image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)}
    want = (x01 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(PixelPrep(task, spec, 8)(xt), want, atol=1e-5)
    big = PixelPrep(task, {**spec, "size": (16, 16)}, 8)(xt)
    assert big.shape == (2, 3, 16, 16)
    # a constant image stays constant through the resize
    flat = PixelPrep(task, {**spec, "size": (16, 16)}, 8)(torch.zeros(1, 3, 8, 8))
    assert torch.allclose(flat[0, 0], torch.full((16, 16), (0.1 - 0.485) / 0.229), atol=1e-5)


def test_vit_trains_on_cifar100_and_tiny_imagenet(tmp_path, cifar100_root, tiny_imagenet_root):
    s = run_inprocess(tmp_path / "c", ["model=tiny_vit", "task=cifar100", f"task.root={cifar100_root}", "task.verify_md5=false",
                                       "trainer.max_steps=2", "trainer.batch_size=8"])
    assert s["status"] == "completed" and 0 <= s["metrics"]["validation"]["accuracy"] <= 1
    keys = load_file(tmp_path / "c" / "checkpoints" / "final" / "model.safetensors")
    assert keys["classifier.weight"].shape == (100, 32)
    s = run_inprocess(tmp_path / "t", ["model=tiny_vit", "task=tiny_imagenet", f"task.data_dir={tiny_imagenet_root}",
                                       "trainer.max_steps=2", "trainer.batch_size=4"])
    assert s["status"] == "completed" and 0 <= s["metrics"]["main"] <= 1
    assert (tmp_path / "t" / "checkpoints" / "final" / "model.safetensors").is_file()


def test_pruning_and_lora_on_vit(tmp_path, cifar100_root):
    base = ["model=tiny_vit", "task=cifar100", f"task.root={cifar100_root}", "task.verify_md5=false", "trainer.max_steps=1", "trainer.batch_size=8"]
    s = run_inprocess(tmp_path / "nm", [*base, "method=omp", "method.pattern=2:4"])
    layers = s["sparsity"]["per_layer"]
    assert set(layers) == {f"vit.layers.{i}.{m}.weight" for i in (0, 1)
                           for m in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2")}
    w = load_file(tmp_path / "nm" / "checkpoints" / "final" / "model.safetensors")["vit.layers.0.mlp.fc1.weight"]
    assert ((w.reshape(-1, 4) != 0).sum(1) <= 2).all()  # 2:4 along the input dimension
    s = run_inprocess(tmp_path / "lora", [*base, "method=lora"])
    assert s["method_report"]["adapted_modules"] == ["vit.layers.*.attention.q_proj", "vit.layers.*.attention.v_proj"]
    assert s["method_report"]["trained_heads"] == ["classifier"]


@pytest.mark.parametrize("method", ["adapter", "ia3", "prompt_tuning", "read", "lst"])
def test_text_only_methods_fail_on_vit_before_loading(method):
    with pytest.raises(ConfigError, match=f"method.name.*method={method} cannot run on model=vit_base"):
        validate(compose(["model=vit_base", "task=cifar100", f"method={method}"]))


def test_lora_on_a_torchvision_resnet_fails_before_loading():
    with pytest.raises(ConfigError, match="method.name.*torchvision ResNet"):
        validate(compose(["model=tiny_resnet", "task=digits", "method=lora"]))
    validate(compose(["model=tiny_vit", "task=digits", "method=lora"]))


@pytest.mark.parametrize("model,task", [("vit_base", "rte"), ("dino_base", "sst2"), ("tiny_bert", "cifar100"), ("bert_base", "tiny_imagenet")])
def test_vision_model_with_text_task_and_the_reverse_fail(model, task):
    with pytest.raises(ConfigError, match="model.*cannot run a"):
        validate(compose([f"model={model}", f"task={task}"]))


def test_a_local_checkpoint_gets_a_new_head_and_its_own_processor(tmp_path):
    """A DINO-like checkpoint (ViTModel, no classifier) saved with its preprocessor config: the
    head is new and the images are resized/normalised as that config says."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from sparse_ft.models import build_model

    ckpt = tmp_path / "dino_like"
    torch.manual_seed(0)
    body = ViTModel(ViTConfig(image_size=48, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64), add_pooling_layer=False)
    body.save_pretrained(ckpt)
    ViTImageProcessor(size={"height": 48, "width": 48}, resample=3, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(ckpt)
    model_cfg = OmegaConf.merge(compose(["model=dino_base"]).model, {"name_or_path": str(ckpt)})
    task = load_task(compose(["task=digits", "task.max_train_samples=8", "task.max_eval_samples=8"]).task, seed=0)
    bundle = build_model(model_cfg, task)
    assert bundle.info["image_processor"] == {"size": [48, 48], "resample": "bicubic", "image_mean": pytest.approx([0.485, 0.456, 0.406]),
                                              "image_std": pytest.approx([0.229, 0.224, 0.225])}
    sd = bundle.module.state_dict()
    name = next(k for k in sd if k.endswith("layers.0.mlp.fc1.weight"))
    assert torch.equal(sd[name], body.state_dict()[name.removeprefix("vit.")])  # the body is the checkpoint's
    assert bundle.module.classifier.out_features == 10
    batch = bundle.collate([task.splits["train"][i] for i in range(4)])
    assert bundle.logits(batch).shape == (4, 10)


def test_near_zero_weight_fractions_per_layer_as_figure_7(tmp_path):
    """ES Figure 7's statistic on a tiny ViT against a reference written here: each block Linear
    weight's rows scaled to unit L2 norm, the fraction with |w| < t; head and patch embedding excluded."""
    from transformers import ViTConfig, ViTForImageClassification

    from sparse_ft.models.weight_stats import block_linear_weights, main, near_zero_fractions

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64, num_labels=3))
    weights = block_linear_weights(model)
    assert len(weights) == 12 and not any("classifier" in n or "patch" in n for n in weights)
    got = near_zero_fractions(weights, 0.02)
    small = total = 0
    for name, w in weights.items():
        rows = w / np.sqrt((w ** 2).sum(axis=1, keepdims=True))
        n = int((np.abs(rows) < 0.02).sum())
        assert got["per_layer"][name] == pytest.approx(n / w.size)
        small, total = small + n, total + w.size
    assert got["overall"] == pytest.approx(small / total) and 0 < got["overall"] < 1
    raw = near_zero_fractions(weights, 0.02, normalize="none")["overall"]
    assert raw == pytest.approx(sum(int((np.abs(w) < 0.02).sum()) for w in weights.values()) / total)
    assert main(["model=tiny_vit", "--threshold", "0.02", "--out", str(tmp_path / "f7.png"), "--json", str(tmp_path / "f7.json")]) == 0
    assert (tmp_path / "f7.png").read_bytes()[:4] == b"\x89PNG" and "tiny_vit" in json.loads((tmp_path / "f7.json").read_text())


def test_tiny_imagenet_from_datasets(tmp_path):
    """task.data_dir=null reads `datasets` (zh-plus/tiny-imagenet's image/label columns; here a local parquet copy)."""
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    feats = Features({"image": Image(), "label": ClassLabel(names=["n01443537", "n01629819"])})
    rng = np.random.default_rng(0)
    pics = [PILImage.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    hf = tmp_path / "tin_hf"
    hf.mkdir()
    Dataset.from_dict({"image": pics, "label": [0, 1, 1, 0]}, features=feats).to_parquet(str(hf / "train.parquet"))
    Dataset.from_dict({"image": pics[:2], "label": [1, 0]}, features=feats).to_parquet(str(hf / "valid.parquet"))
    task = load_task(compose(["task=tiny_imagenet", f"task.hf_dataset={hf}", "task.augment=false"]).task, seed=0)
    assert task.sizes() == {"train": 4, "validation": 2} and task.label_names == ["n01443537", "n01629819"]
    x, y = task.splits["validation"][0]
    assert x.shape == (3, 64, 64) and y == 1
    with pytest.raises(DataError, match="task.hf_dataset"):
        load_task(compose(["task=tiny_imagenet", f"task.hf_dataset={tmp_path / 'none'}"]).task, seed=0)


def test_fish_sparse_delta_on_vit_rebuilds_the_final_checkpoint(tmp_path, cifar100_root):
    from sparse_ft.artifacts.apply_delta import rebuild

    run = tmp_path / "r"
    run_inprocess(run, ["model=tiny_vit", "task=cifar100", f"task.root={cifar100_root}", "task.verify_md5=false", "method=fish",
                        "trainer.max_steps=2", "trainer.batch_size=8"])
    out = rebuild(run, tmp_path / "rebuilt")
    assert out.read_bytes() == (run / "checkpoints" / "final" / "model.safetensors").read_bytes()
