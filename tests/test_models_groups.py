"""Layer groups and freeze_to for every backbone that builds offline, against independent parameter counts."""
import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

from tlkit.models import count_params, create, freeze, freeze_to, group_table, unfreeze
from tlkit.optim import param_groups

NUM_CLASSES = 5

# Published parameter counts with the 1000-class ImageNet classifier (torchvision / timm model cards).
IMAGENET_TOTALS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                   "efficientnet_lite0": 4_652_008}

# The grouping the lesson teaches, by the reference model's own parameter names: early, middle, late.
GROUP_PREFIXES = {
    "resnet": [("conv1.", "bn1.", "layer1."), ("layer2.", "layer3."), ("layer4.",)],
    "efficientnet_lite0": [("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2."),
                           ("blocks.3.", "blocks.4."), ("blocks.5.", "blocks.6.", "conv_head.", "bn2.")],
}


def reference_model(backbone: str) -> tuple[nn.Module, str]:
    """The untouched library model and the name of its classifier."""
    if backbone == "efficientnet_lite0":
        return timm.create_model("tf_efficientnet_lite0", pretrained=False), "classifier."
    return tvm.get_model(backbone, weights=None), "fc."


def expected_group_counts(backbone: str) -> list[int]:
    """Parameter count per layer group (early, middle, late, new head) from the reference model."""
    model, classifier = reference_model(backbone)
    prefixes = GROUP_PREFIXES["efficientnet_lite0" if backbone == "efficientnet_lite0" else "resnet"]
    named = dict(model.named_parameters())
    counts = [sum(p.numel() for n, p in named.items() if n.startswith(pre)) for pre in prefixes]
    body_total = sum(p.numel() for n, p in named.items() if not n.startswith(classifier))
    assert sum(counts) == body_total, "the groups must cover the whole body"
    feature_dim = getattr(model, "num_features", None) or model.fc.in_features
    imagenet_head = sum(p.numel() for n, p in named.items() if n.startswith(classifier))
    assert body_total + imagenet_head == IMAGENET_TOTALS[backbone]
    return counts + [feature_dim * NUM_CLASSES + NUM_CLASSES]


@pytest.fixture(scope="module", params=["efficientnet_lite0", "resnet18", "resnet34", "resnet50"])
def backbone_net(request):
    name = request.param
    net = create(name, num_classes=NUM_CLASSES, pretrained=name == "efficientnet_lite0")
    return name, net, expected_group_counts(name)


def test_groups_partition_the_parameters(backbone_net):
    _, net, expected = backbone_net
    assert len(net.groups) == 4 and net.groups[-1] is net.head
    ids = [id(p) for g in net.groups for p in g.parameters()]
    assert len(ids) == len(set(ids)), "a parameter belongs to two layer groups"
    assert set(ids) == {id(p) for p in net.parameters()}
    assert [count_params(g, trainable=False) for g in net.groups] == expected


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, -1, -2])
def test_freeze_to_trains_groups_n_onwards(backbone_net, n):
    _, net, expected = backbone_net
    freeze_to(net, n)
    start = n % 4 if n < 0 else n
    assert count_params(net) == sum(expected[start:])
    assert count_params(net, trainable=False) == sum(expected)
    for i, g in enumerate(net.groups):
        flags = {p.requires_grad for p in g.parameters()}
        assert flags == {i >= start}
    rows = group_table(net)
    assert [r["params"] for r in rows] == expected
    assert [r["trainable"] for r in rows] == [c if i >= start else 0 for i, c in enumerate(expected)]
    if start < 4:
        opt_params = [p for g in param_groups(net, slice(1e-5, 1e-3)) for p in g["params"]]
        assert sum(p.numel() for p in opt_params) == sum(expected[start:])
    unfreeze(net)
    assert count_params(net) == sum(expected)


def test_freeze_is_head_only_and_out_of_range_is_refused(backbone_net):
    _, net, expected = backbone_net
    freeze(net)
    assert count_params(net) == expected[-1]
    with pytest.raises(ValueError, match="layer groups"):
        freeze_to(net, 5)
    with pytest.raises(ValueError, match="layer groups"):
        freeze_to(net, -5)
    unfreeze(net)


def test_frozen_batchnorm_stays_in_eval_mode(backbone_net):
    _, net, _ = backbone_net
    freeze_to(net, 2)
    net.train()
    for i, g in enumerate(net.groups[:-1]):
        bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns, "every body group of these backbones has BatchNorm"
        assert all(m.training == (i >= 2) for m in bns)
    unfreeze(net).train()
    assert all(m.training for m in net.modules())


def test_group_table_layers_name_the_modules():
    net = create("resnet18", num_classes=NUM_CLASSES, pretrained=False)
    rows = group_table(net)
    assert rows[0]["layers"] == "Conv2d, BatchNorm2d, Sequential"
    assert rows[-1]["layers"] == "Linear"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.head(net.body(x)))
