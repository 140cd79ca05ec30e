"""Networks: shapes, bottleneck features, zero-initialised outputs, per-sample independence, embeddings."""
import math

import pytest
import torch

from diffode.nets.embedding import FourierEmbedding, PositionalEmbedding, count_parameters
from diffode.nets.mlp import MLP
from diffode.nets.unet import UNet


def _perturb(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def small_unet(**kw):
    args = dict(resolution=8, in_channels=1, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                attn_resolutions=(4,))
    return UNet(**{**args, **kw})


def test_unet_shapes_and_bottleneck():
    net = small_unet()
    x, c = torch.randn(3, 1, 8, 8), torch.randn(3)
    out, feats = net(x, c, return_bottleneck=True)
    assert out.shape == x.shape
    assert feats.shape == (3, net.bottleneck_channels, 2, 2) == (3, 32, 2, 2)
    assert torch.equal(net.bottleneck(x, c), feats)
    # zero-initialised output convolution: a fresh net predicts exactly 0
    assert torch.count_nonzero(out) == 0


def test_unet_cifar_like_and_scalar_condition():
    net = UNet(resolution=16, in_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(8,), dropout=0.1, embedding="fourier")
    x = torch.randn(2, 3, 16, 16)
    assert net(x, torch.tensor(0.3)).shape == x.shape  # a scalar c_noise broadcasts over the batch
    assert count_parameters(net) > 0


def test_unet_samples_are_independent_and_condition_matters():
    net = _perturb(small_unet()).eval()
    x, c = torch.randn(4, 1, 8, 8), torch.linspace(-1, 1, 4)
    full = net(x, c)
    alone = torch.cat([net(x[i:i + 1], c[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(full, alone, rtol=1e-4, atol=1e-5)  # GroupNorm, no batch statistics
    assert not torch.allclose(net(x, c), net(x, c + 0.5))


def test_unet_gradients_reach_every_parameter():
    net = _perturb(small_unet())
    net(torch.randn(2, 1, 8, 8), torch.randn(2)).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_unet_resolution_error_names_fix():
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(resolution=6, in_channels=1, channel_mult=(1, 2, 2))


def test_mlp_shapes_and_bottleneck():
    net = _perturb(MLP(dim=5, hidden=32, depth=2))
    x, c = torch.randn(7, 5), torch.rand(7) * 999
    out, h = net(x, c, return_bottleneck=True)
    assert out.shape == (7, 5) and h.shape == (7, 32)
    assert torch.equal(net.bottleneck(x, c), h)
    assert torch.count_nonzero(MLP(dim=5, hidden=32, depth=2)(x, c)) == 0


def test_positional_embedding_values():
    emb = PositionalEmbedding(8, max_positions=10000)
    c = torch.tensor([0.0, 2.0])
    e = emb(c)
    freqs = [10000 ** (-i / 3) for i in range(4)]
    expected = [[math.cos(ci * f) for f in freqs] + [math.sin(ci * f) for f in freqs] for ci in (0.0, 2.0)]
    torch.testing.assert_close(e, torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_fourier_embedding_is_fixed_and_bounded():
    a, b = FourierEmbedding(16, seed=0), FourierEmbedding(16, seed=0)
    c = torch.randn(5)
    assert torch.equal(a(c), b(c)) and a(c).abs().max() <= 1.0
    assert all(not p.requires_grad for p in a.buffers())
