"""Models by name (timm, torchvision, transformers), pre-trained through each library's own loading —
tested offline with local weight files — and the user's own image folders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from addin_studio.sources.image_folder import image_folder_loaders
from addin_studio.sources.models import ModelLoadError, create_model, parse_model_spec


def _same_state(a: nn.Module, b: nn.Module, skip: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    body = [k for k in sa if not k.startswith(skip + ".")]
    assert body and all(torch.equal(sa[k], sb[k]) for k in body)


def test_model_spec_errors_name_the_mistake():
    assert parse_model_spec("transformers:/some/dir") == ("transformers", "/some/dir")
    with pytest.raises(ValueError, match="expected timm:NAME, torchvision:NAME or transformers"):
        parse_model_spec("resnet18")
    with pytest.raises(ModelLoadError, match="unknown timm model 'resnet81'; did you mean"):
        create_model("timm:resnet81", 3)
    with pytest.raises(ModelLoadError, match="no weights file"):
        create_model("timm:resnet18", 3, weights="/no/such.safetensors")


def test_timm_pretrained_from_a_local_file_goes_through_timms_loading(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    published = timm.create_model("resnet18", pretrained=False)  # stands in for the ImageNet weights
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, str(path))
    named = create_model("timm:resnet18", 4, pretrained=True, weights=path)
    assert named.head == "fc" and named.model.fc.out_features == 4
    _same_state(named.model, published, "fc")
    reference = timm.create_model(
        "resnet18", pretrained=True, num_classes=4, pretrained_cfg_overlay=dict(file=str(path))
    )
    _same_state(named.model, reference, "fc")
    assert named.input_size == (3, 224, 224)
    x = torch.rand(3, 40, 40)
    from PIL import Image

    image = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype("uint8"))
    assert tuple(named.transforms(False)(image).shape) == (3, 224, 224)
    assert tuple(named.transforms(True, 32)(image).shape) == (3, 32, 32)


def test_torchvision_pretrained_uses_its_weights_enum_and_cache(tmp_path, monkeypatch):
    import os

    import torchvision

    torch.manual_seed(0)
    published = torchvision.models.resnet18()
    enum = torchvision.models.ResNet18_Weights.DEFAULT
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(published.state_dict(), cache / os.path.basename(enum.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torchvision finds the "downloaded" file there
    named = create_model("torchvision:resnet18", 5, pretrained=True)
    assert named.head == "fc" and named.model.fc.out_features == 5
    _same_state(named.model, published, "fc")
    assert named.transforms(False) is not None and named.input_size == (3, 224, 224)


def test_transformers_pretrained_from_a_saved_folder(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=7,
    )
    published = ViTForImageClassification(config)
    published.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4] * 3, image_std=[0.2] * 3
    ).save_pretrained(tmp_path / "vit")
    named = create_model(f"transformers:{tmp_path / 'vit'}", 3, pretrained=True)
    assert named.model.classifier.out_features == 3 and named.head == "classifier"
    _same_state(named.model, published, "classifier")
    assert named.input_size == (3, 32, 32) and named.fixed_size
    assert named.mean == (0.4, 0.4, 0.4) and named.std == (0.2, 0.2, 0.2)


def test_weights_file_loads_the_body_and_skips_the_old_classifier(tmp_path):
    import timm

    torch.manual_seed(0)
    published = timm.create_model("resnet18", pretrained=False)  # 1000 classes
    path = tmp_path / "w.pt"
    torch.save(published.state_dict(), path)
    named = create_model("timm:resnet18", 3, weights=path)
    _same_state(named.model, published, "fc")
    assert named.model.fc.out_features == 3


def test_offline_pretrained_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="could not load the pre-trained weights of timm:resnet18"):
        create_model("timm:resnet18", 3, pretrained=True)


def test_image_folder_split_is_seeded_and_stratified(tmp_path, make_image_folder):
    from torchvision import transforms as T

    root = make_image_folder(tmp_path / "d", classes=("b", "a", "c"), per_class=10, size=12)
    to_tensor = T.ToTensor()
    data = image_folder_loaders(root, train_transform=to_tensor, val_transform=to_tensor, batch_size=8)
    assert data.classes == ["a", "b", "c"] and (data.num_train, data.num_val) == (24, 6)
    again = image_folder_loaders(root, train_transform=to_tensor, val_transform=to_tensor, batch_size=8)
    assert data.val.dataset.indices == again.val.dataset.indices
    labels = torch.cat([y for _, y in data.val])
    assert torch.bincount(labels).tolist() == [2, 2, 2]
    x, y = next(iter(data.train))
    assert tuple(x.shape[1:]) == (3, 12, 12) and y.dtype == torch.int64
    small = image_folder_loaders(
        root, train_transform=T.Compose([T.Resize(6), to_tensor]), val_transform=to_tensor, batch_size=8
    )
    assert tuple(next(iter(small.train))[0].shape[1:]) == (3, 6, 6)  # training images: their transform
    assert tuple(next(iter(small.val))[0].shape[1:]) == (3, 12, 12)  # held-out images: the evaluation one


def test_image_folder_uses_a_val_folder_when_present(tmp_path, make_image_folder):
    from torchvision import transforms as T

    make_image_folder(tmp_path / "d" / "train", classes=("x", "y"), per_class=5)
    make_image_folder(tmp_path / "d" / "val", classes=("x", "y"), per_class=2, seed=1, mode="L")
    data = image_folder_loaders(tmp_path / "d", train_transform=T.ToTensor(), val_transform=T.ToTensor())
    assert (data.num_train, data.num_val, data.classes) == (10, 4, ["x", "y"])
    x, _ = next(iter(data.val))
    assert x.shape[1] == 3  # grey images are read as RGB
    make_image_folder(tmp_path / "e", classes=("x", "y"), per_class=3)
    make_image_folder(tmp_path / "e" / "val", classes=("x",), per_class=1)
    with pytest.raises(ValueError, match="has no class folder 'y'"):
        image_folder_loaders(tmp_path / "e")
    with pytest.raises(ValueError, match="at least two class folders"):
        make_image_folder(tmp_path / "f", classes=("only",), per_class=2)
        image_folder_loaders(tmp_path / "f")
