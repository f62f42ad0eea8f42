"""Filter-normalised directions, loss curves and sharpness against exact references."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tlkit.lessons import l04_sgdr as L



def small_convnet():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))


def image_loader():
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(24, 3, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)),
                      batch_size=10)


def test_direction_filters_have_the_weight_filters_norms():
    net = small_convnet()
    params = L.trainable_params(net)
    direction = L.filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, d in zip(params, direction):
        assert d.shape == p.shape
        if p.dim() > 1:
            dims = tuple(range(1, p.dim()))
            torch.testing.assert_close(torch.linalg.vector_norm(d, dim=dims), torch.linalg.vector_norm(p, dim=dims))
        else:
            assert torch.count_nonzero(d) == 0
    # same seed, same raw directions: two nets of the same shape are probed along matching directions
    again = L.filter_normalized_direction(params, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(direction, again))


def test_curves_restore_weights_and_mode_and_alpha_zero_is_the_plain_loss():
    net, loader = small_convnet(), image_loader()
    net.train()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    curves = L.loss_curves(net, loader, [-0.5, 0.0, 0.5], n_directions=2)
    assert curves.shape == (2, 3)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training
    net.eval()
    x, y = loader.dataset.tensors
    with torch.no_grad():
        reference = F.cross_entropy(net(x), y).item()
    np.testing.assert_allclose(curves[:, 1], reference, rtol=1e-6)
    assert np.all(curves[:, [0, 2]] != curves[:, [1]])


def test_sharpness_of_a_quadratic_loss_equals_the_hessian_formula():
    """Linear regression with MSE is exactly quadratic: mean of L(+-r d) - L(0) = r^2/2 * d^T H d."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    model = torch.nn.Linear(5, 2).double()
    loader = DataLoader(TensorDataset(x, y), batch_size=40)
    radius, n_dirs, seed = 0.7, 3, 4
    got = L.sharpness(model, loader, radius, n_dirs, seed, loss_fn=F.mse_loss)

    weight, bias = model.weight.detach(), model.bias.detach()
    generator = torch.Generator().manual_seed(seed)
    curvatures = []
    for _ in range(n_dirs):
        d_weight, d_bias = L.filter_normalized_direction([model.weight, model.bias], generator)
        assert torch.count_nonzero(d_bias) == 0
        _, hvp = torch.autograd.functional.hvp(lambda w: F.mse_loss(x @ w.T + bias, y), weight, d_weight)
        curvatures.append((d_weight * hvp).sum().item())
    assert got == pytest.approx(radius ** 2 / 2 * np.mean(curvatures), rel=1e-9)
    assert got > 0


def test_sharper_minimum_has_larger_sharpness():
    """Scaling the inputs by 3 multiplies the curvature of a linear-MSE loss by 9."""
    torch.manual_seed(0)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 1, dtype=torch.float64)
    model = torch.nn.Linear(4, 1).double()
    flat = L.sharpness(model, DataLoader(TensorDataset(x, y), batch_size=7), 0.3, 2, loss_fn=F.mse_loss)
    sharp = L.sharpness(model, DataLoader(TensorDataset(3 * x, y), batch_size=7), 0.3, 2, loss_fn=F.mse_loss)
    assert sharp == pytest.approx(9 * flat, rel=1e-9)
