"""Feature precomputation: equal to the body's output, cached on disk, invalidated by every input it depends on."""
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from tlkit import data, features, models


def tiny_net(seed: int = 0, name: str = "tiny") -> models.Net:
    """A small Net whose body behaves differently in train mode (BatchNorm + Dropout), like a real backbone."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        body[1].running_mean.uniform_(-0.5, 0.5)
        body[1].running_var.uniform_(0.5, 2.0)
    head = nn.Linear(6, 2)
    return models.Net(body, head, [body, head], 6, data.DEFAULT_NORM, name, pretrained=False)


def random_images(n: int = 10, seed: int = 0, size: int = 20) -> data.ImageList:
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8) for _ in range(n)]
    return data.ImageList(arrays, [i % 2 for i in range(n)], ["a", "b"])


def eval_tf(size: int = 16, norm=data.DEFAULT_NORM):
    return data.eval_transform(size, norm)


class ForwardCounter:
    """Counts how many images go through a module (to prove a cache hit computes nothing)."""

    def __init__(self, module: nn.Module):
        self.images = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.images += inputs[0].shape[0]


def reference_features(net: models.Net, images: data.ImageList) -> torch.Tensor:
    net.body.eval()
    with torch.no_grad():
        return torch.cat([net.body(images[i][0][None]) for i in range(len(images))])


def test_precomputed_features_equal_body_output_in_eval_mode(tmp_path):
    net = tiny_net()
    net.train()  # precompute must switch to eval itself and restore the modes afterwards
    images = random_images().with_transform(eval_tf())
    fs = features.precompute(net, images, cache_dir=tmp_path, batch_size=3, progress=False)
    assert fs.x.dtype == torch.float32 and fs.y.dtype == torch.long
    assert fs.x.shape == (10, 6) and fs.y.tolist() == images.targets
    assert all(m.training for m in net.body.modules())
    torch.testing.assert_close(fs.x, reference_features(net, images), rtol=1e-5, atol=1e-6)
    # and not what the body computes in train mode (dropout + batch statistics)
    net.train()
    with torch.no_grad():
        train_mode = net.body(torch.stack([images[i][0] for i in range(len(images))]))
    assert not torch.allclose(train_mode, fs.x, atol=1e-3)


def test_precompute_keeps_a_half_frozen_nets_modes(tmp_path):
    net = tiny_net()
    models.freeze(net)
    net.train()  # frozen BatchNorm stays in eval mode, the Dropout trains
    before = {name: m.training for name, m in net.named_modules()}
    features.precompute(net, random_images().with_transform(eval_tf()), cache_dir=tmp_path, progress=False)
    assert {name: m.training for name, m in net.named_modules()} == before
    assert before["body.1"] is False and before["body.3"] is True


def test_a_cache_miss_and_a_cache_hit_leave_the_same_global_rng(tmp_path):
    """Why: a seeded lesson must train the same head whether or not the features were cached."""
    net, images = tiny_net(), random_images().with_transform(eval_tf())
    after = []
    for _ in range(2):  # the first call computes (a DataLoader draws a seed), the second reads the cache
        torch.manual_seed(3)
        fs = features.precompute(net, images, cache_dir=tmp_path, progress=False)
        after.append((fs.from_cache, torch.rand(4)))
    assert [hit for hit, _ in after] == [False, True]
    assert torch.equal(after[0][1], after[1][1])


def test_cache_round_trip_is_exact_and_does_not_recompute(tmp_path):
    net = tiny_net()
    counter = ForwardCounter(net.body)
    images = random_images().with_transform(eval_tf())
    first = features.precompute(net, images, cache_dir=tmp_path, progress=False)
    assert counter.images == 10 and not first.from_cache
    assert first.path.exists() and first.path.name == f"{first.key}.pt"
    second = features.precompute(net, images, cache_dir=tmp_path, progress=False)
    assert counter.images == 10, "a cache hit must not run the backbone"
    assert second.from_cache and second.key == first.key
    assert torch.equal(second.x, first.x) and torch.equal(second.y, first.y)
    assert second.classes == ["a", "b"] and second.compute_seconds == pytest.approx(first.compute_seconds)
    assert features.cache_meta(second)["backbone"] == "tiny"
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary files left


def test_default_cache_dir_is_under_tlkit_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    fs = features.precompute(tiny_net(), random_images(4).with_transform(eval_tf()), progress=False)
    assert fs.path.parent == tmp_path / "features"


def _perturbed_weights(net):
    with torch.no_grad():
        net.body[0].weight[0, 0, 0, 0] += 1e-3
    return net


def _batchnorm_stats_changed(net):
    with torch.no_grad():
        net.body[1].running_mean[0] += 0.1
    return net


@pytest.mark.parametrize("change", ["weights", "bn_running_stats", "backbone_name", "dataset_item", "dataset_label",
                                    "dataset_subset", "normalisation", "image_size", "crop_pct", "decode_size"])
def test_any_change_gives_a_new_key_and_fresh_features(tmp_path, change):
    net, images = tiny_net(), random_images().with_transform(eval_tf())
    base = features.precompute(net, images, cache_dir=tmp_path, progress=False)
    if change == "weights":
        net = _perturbed_weights(net)
    elif change == "bn_running_stats":
        net = _batchnorm_stats_changed(net)
    elif change == "backbone_name":
        net.name = "tiny_v2"
    elif change == "dataset_item":
        items = list(images.items)
        items[3] = items[3].copy()
        items[3][0, 0, 0] ^= 1
        images = data.ImageList(items, images.targets, images.classes, images.transform)
    elif change == "dataset_label":
        targets = list(images.targets)
        targets[0] = 1 - targets[0]
        images = data.ImageList(images.items, targets, images.classes, images.transform)
    elif change == "dataset_subset":
        images = images.take(range(8))
    elif change == "normalisation":
        images = images.with_transform(eval_tf(norm=models.IMAGENET_NORM))
    elif change == "image_size":
        images = images.with_transform(eval_tf(size=12))
    elif change == "crop_pct":
        images = images.with_transform(data.eval_transform(16, crop_pct=1.0))
    elif change == "decode_size":
        images = images.with_transform(images.transform, decode_size=64)
    counter = ForwardCounter(net.body)
    fresh = features.precompute(net, images, cache_dir=tmp_path, progress=False)
    assert fresh.key != base.key and not fresh.from_cache
    assert counter.images == len(images), "changed inputs must be recomputed, not read from the old cache"
    torch.testing.assert_close(fresh.x, reference_features(net, images), rtol=1e-5, atol=1e-6)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_a_changed_file_on_disk_invalidates_the_cache(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(paths[-1])
    images = data.ImageList([str(p) for p in paths], [0, 1, 0, 1], ["a", "b"], eval_tf())
    net = tiny_net()
    base = features.precompute(net, images, cache_dir=tmp_path / "cache", progress=False)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(paths[2])  # same name, new photo
    os.utime(paths[2], ns=(1, 1))  # even with an old timestamp, the size/mtime pair changes
    fresh = features.precompute(net, images, cache_dir=tmp_path / "cache", progress=False)
    assert fresh.key != base.key
    torch.testing.assert_close(fresh.x, reference_features(net, images), rtol=1e-5, atol=1e-6)


def test_real_backbone_key_tracks_pretrained_weights(tmp_path):
    """EfficientNet-Lite0: pretrained vs random bodies get different keys; features equal body(x)."""
    splits = data.get_splits("hymenoptera")
    images = splits.val.take([0, 1, 80, 81]).with_transform(data.eval_transform(64, models.LITE0_NORM), 80)
    pretrained = models.freeze(models.create("efficientnet_lite0", 2, pretrained=True))
    random_init = models.freeze(models.create("efficientnet_lite0", 2, pretrained=False))
    a = features.precompute(pretrained, images, cache_dir=tmp_path, progress=False)
    b = features.precompute(random_init, images, cache_dir=tmp_path, progress=False)
    assert a.key != b.key and a.key.startswith("efficientnet_lite0-")
    torch.testing.assert_close(a.x, reference_features(pretrained, images), rtol=1e-4, atol=1e-5)
    assert a.x.shape == (4, 1280)


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    fs = features.FeatureSet(torch.randn(5, 3), torch.arange(5) % 2, "k", ["a", "b"], 1.0)

    def broken_save(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(features.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        features.save_features(fs, tmp_path / "k.pt")
    assert list(tmp_path.iterdir()) == []


def test_damaged_cache_file_is_recomputed(tmp_path):
    net, images = tiny_net(), random_images().with_transform(eval_tf())
    first = features.precompute(net, images, cache_dir=tmp_path, progress=False)
    first.path.write_bytes(b"not a torch file")
    counter = ForwardCounter(net.body)
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        again = features.precompute(net, images, cache_dir=tmp_path, progress=False)
    assert counter.images == len(images) and not again.from_cache
    torch.testing.assert_close(again.x, first.x)
    assert features.load_features(first.path).from_cache  # rewritten, readable again


def test_random_transform_is_detected_and_warned_without_touching_the_rng(tmp_path):
    images = random_images()
    augmented = images.with_transform(T.Compose([T.ToImage(), T.RandomResizedCrop(16, antialias=True),
                                                 T.ToDtype(torch.float32, scale=True)]))
    assert features.transform_is_random(augmented)
    assert not features.transform_is_random(images.with_transform(eval_tf()))
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    features.transform_is_random(augmented)
    assert torch.equal(torch.rand(3), expected)
    with pytest.warns(UserWarning, match="augmentation has no effect"):
        features.precompute(tiny_net(), augmented, cache_dir=tmp_path, progress=False)


def test_precompute_refuses_images_without_a_tensor_transform(tmp_path):
    with pytest.raises(TypeError, match="eval_transform"):
        features.precompute(tiny_net(), random_images(), cache_dir=tmp_path, progress=False)


def test_subset_is_stratified_seeded_and_matches_image_subsets():
    targets = [0] * 60 + [1] * 30 + [2] * 10
    fs = features.FeatureSet(torch.arange(100.0)[:, None].repeat(1, 3), torch.tensor(targets), "k", ["a", "b", "c"])
    sub = fs.subset(0.2, seed=1)
    assert torch.bincount(sub.y).tolist() == [12, 6, 2]
    assert torch.equal(sub.x, fs.subset(0.2, seed=1).x)
    assert not torch.equal(sub.x, fs.subset(0.2, seed=2).x)
    images = data.ImageList(list(range(100)), targets, ["a", "b", "c"]).subset(0.2, seed=1)
    assert sub.x[:, 0].long().tolist() == images.items  # the same rows as the same ImageList subset
    tiny = fs.subset(0.01, seed=0)  # at least one of every class
    assert sorted(set(tiny.y.tolist())) == [0, 1, 2]


def separable_features(n: int = 200, dim: int = 8, seed: int = 0) -> features.FeatureSet:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, dim, generator=g) + 3.0 * (2 * y[:, None] - 1) * torch.ones(dim) / dim ** 0.5
    return features.FeatureSet(x, y, f"sep{seed}", ["neg", "pos"])


def test_feature_loaders_shuffle_with_a_seed():
    train, val = separable_features(), separable_features(seed=1)
    dls = features.feature_loaders(train, val, batch_size=16, seed=5)
    first = torch.cat([y for _, y in dls.train])
    again = torch.cat([y for _, y in features.feature_loaders(train, val, 16, seed=5).train])
    assert torch.equal(first, again) and not torch.equal(first, train.y)
    assert torch.equal(torch.cat([y for _, y in dls.val]), val.y)  # validation order is kept
    assert dls.num_classes == 2
    assert len(dls.train) == 13 and len(features.feature_loaders(train, val, 16, seed=5, drop_last=True).train) == 12
    with pytest.raises(ValueError, match="different backbones"):
        features.feature_loaders(train, features.FeatureSet(torch.zeros(4, 3), torch.zeros(4)), 4)


def test_head_trained_on_features_is_the_nets_head():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(8, 8))
    with torch.no_grad():
        body[1].weight.copy_(torch.eye(8))
        body[1].bias.zero_()
    net = models.Net(body, nn.Linear(8, 2), [body, nn.Identity()], 8, data.DEFAULT_NORM, "identity", False)
    models.freeze(net)
    train, val = separable_features(), separable_features(seed=1)
    learn = features.head_learner(net, train, val, batch_size=16, seed=0, progress=False)
    assert learn.net is net.head
    hist = learn.fit(5, 3e-2)
    assert hist["val_acc"].iloc[-1] > 0.95
    with torch.no_grad():  # the whole Net now classifies raw inputs with the trained head
        acc = (net(val.x[:, :, None]).argmax(1) == val.y).float().mean().item()
    assert acc == pytest.approx(hist["val_acc"].iloc[-1])


def test_attach_head_puts_a_trained_head_into_the_net():
    net = tiny_net()
    head = nn.Linear(6, 2)
    features.attach_head(net, head)
    assert net.head is head and net.groups[-1] is head
    x = torch.randn(2, 3, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x), head(net.body(x)))


def _damage(path, how, net, images):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "another entry's file":     # a valid file, written for other images
        other = features.precompute(net, random_images(seed=9).with_transform(eval_tf()), cache_dir=path.parent / "o",
                                    progress=False)
        path.write_bytes(other.path.read_bytes())
    else:   # the right key, but fewer rows than images: a file nothing in tlkit writes
        fs = features.load_features(path)
        features.save_features(features.FeatureSet(fs.x[:3], fs.y[:3], fs.key, fs.classes, 1.0), path)


@pytest.mark.parametrize("how", ["truncated", "another entry's file", "rows missing"])
def test_a_damaged_or_mismatched_entry_is_rebuilt_not_served(tmp_path, how):
    net, images = tiny_net(), random_images().with_transform(eval_tf())
    first = features.precompute(net, images, cache_dir=tmp_path, progress=False)
    _damage(first.path, how, net, images)
    counter = ForwardCounter(net.body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a truncated file also warns; the point is what is served
        again = features.precompute(net, images, cache_dir=tmp_path, progress=False)
    assert counter.images == len(images) and not again.from_cache
    torch.testing.assert_close(again.x, reference_features(net, images))
    assert features.precompute(net, images, cache_dir=tmp_path, progress=False).from_cache   # rebuilt on disk


WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_features import eval_tf, random_images, tiny_net
from tlkit import features
net, images = tiny_net(), random_images(n=400, size=40).with_transform(eval_tf(32))
import os, time
open({ready!r} + sys.argv[1], "w").close()
while not (os.path.exists({ready!r} + "0") and os.path.exists({ready!r} + "1")):   # start together
    time.sleep(0.01)
features.precompute(net, images, cache_dir={cache!r}, progress=False)
"""


def test_two_processes_filling_the_same_entry_leave_one_good_entry(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    cache, ready = tmp_path / "cache", str(tmp_path / "ready-")
    code = WORKER.format(tests=str(Path(__file__).parent), ready=ready, cache=str(cache))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert os.path.exists(ready + "0") and os.path.exists(ready + "1")
    assert [p.suffix for p in cache.iterdir()] == [".pt"]     # one entry, no temporary file left behind
    net, images = tiny_net(), random_images(n=400, size=40).with_transform(eval_tf(32))
    counter = ForwardCounter(net.body)
    served = features.precompute(net, images, cache_dir=cache, progress=False)
    assert served.from_cache and counter.images == 0
    torch.testing.assert_close(served.x, reference_features(net, images))
