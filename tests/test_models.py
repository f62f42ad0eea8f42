"""Backbones, offline weights, heads, layer groups and freezing."""
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

from tlkit import models


@pytest.fixture(scope="module")
def lite0_imagenet():
    return models.create("efficientnet_lite0", num_classes=None)


def test_offline_lite0_recognises_the_scikit_image_photos(lite0_imagenet):
    preds = models.imagenet_top_k(lite0_imagenet, [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())])
    assert preds[0][0][0] == 285 and preds[0][0][1] == "Egyptian cat"
    assert preds[1][0][0] == 967 and preds[1][0][1] == "espresso"


def test_positional_mapping_covers_every_tensor(lite0_imagenet):
    source = torch.load(models.lite0_weights_path(), map_location="cpu", weights_only=True)
    full = dict(lite0_imagenet.body.state_dict(), **{f"classifier.{k}": v for k, v in lite0_imagenet.head.state_dict().items()})
    assert len(source) == 296 == len(full)
    assert torch.equal(next(iter(source.values())), lite0_imagenet.body.conv_stem.weight)


def test_weights_read_once_are_copied_into_each_new_net_never_shared():
    first = models.create("efficientnet_lite0", num_classes=2)
    source = torch.load(models.lite0_weights_path(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        first.body.conv_stem.weight.add_(1.0)                   # a trained net must not change the next one
    second = models.create("efficientnet_lite0", num_classes=2)
    assert torch.equal(second.body.conv_stem.weight, next(iter(source.values())))
    assert second.body.conv_stem.weight.data_ptr() != first.body.conv_stem.weight.data_ptr()


def test_net_is_head_of_body_and_groups_cover_parameters():
    net = models.create("efficientnet_lite0", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = net.body(x)
    assert feats.shape == (2, net.feature_dim) == (2, 1280)
    assert torch.allclose(net(x), net.head(feats))
    grouped = [p for g in net.groups for p in g.parameters()]
    assert len({id(p) for p in grouped}) == len(grouped) == len(list(net.parameters()))
    assert net.norm == models.LITE0_NORM


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_freeze_to_counts(backbone):
    net = models.create(backbone, num_classes=2, pretrained=backbone == "efficientnet_lite0")
    sizes = [models.count_params(g, trainable=False) for g in net.groups]
    total = models.count_params(net, trainable=False)
    assert sum(sizes) == total
    models.freeze(net)
    assert models.count_params(net) == sizes[-1] == net.feature_dim * 2 + 2
    for n in range(len(sizes)):
        models.freeze_to(net, n)
        assert models.count_params(net) == sum(sizes[n:])
    models.unfreeze(net)
    assert models.count_params(net) == total
    with pytest.raises(ValueError, match="layer groups"):
        models.freeze_to(net, 9)


def test_frozen_batchnorm_stays_in_eval_mode():
    net = models.create("efficientnet_lite0", num_classes=2)
    models.freeze(net)
    net.train()
    bns = [m for m in net.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    net(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    models.unfreeze(net)
    net.train()
    assert all(m.training for m in bns)


def test_hidden_head_and_replacing_the_head_updates_groups():
    net = models.create("efficientnet_lite0", num_classes=4, hidden=32, dropout=0.1)
    assert isinstance(net.head, nn.Sequential) and net.head[-1].out_features == 4
    net.head = nn.Linear(net.feature_dim, 7)
    assert net.groups[-1] is net.head


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        models.create("vgg99")


def test_resnet_weights_offline_without_cache_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(models.WeightsUnavailableError, match="hub cache") as err:
        models.create("resnet18", num_classes=2, pretrained=True)
    assert "efficientnet_lite0" in str(err.value)


def test_resnet_weights_are_read_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision.models as tvm
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    weights = tvm.ResNet18_Weights.DEFAULT
    reference = tvm.resnet18()
    target = Path(tmp_path) / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    net = models.create("resnet18", num_classes=2, pretrained=True)
    assert torch.equal(net.body.conv1.weight, reference.conv1.weight)


def test_eval_mode_restores_every_submodules_own_flag():
    """A half-frozen net (frozen BatchNorm in eval, the rest training) comes back exactly as it was."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    net.train()
    net[1].eval()
    before = [m.training for m in net.modules()]
    with models.eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == before
    with pytest.raises(RuntimeError), models.eval_mode(net):
        raise RuntimeError("an interrupted evaluation")
    assert [m.training for m in net.modules()] == before


@pytest.mark.parametrize("classes,hidden", [(2, None), (7, 16)])
def test_output_classes_reads_the_last_linear_layer(classes, hidden):
    net = models.create("resnet18", num_classes=classes, pretrained=False, hidden=hidden)
    assert models.output_classes(net) == classes == net.eval()(torch.zeros(1, 3, 32, 32)).shape[1]
    assert models.output_classes(models.small_cnn(5, blocks=2)) == 5
    with pytest.raises(ValueError, match="no linear layer"):
        models.output_classes(nn.Sequential(nn.Conv2d(3, 4, 3)))
