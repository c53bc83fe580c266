"""bmz's GDN (bmz.codec.layers) is CompressAI's, reimplemented: the same state dict, the same
parameters in the same order, bit-identical outputs and gradients. The float analysis decides
every bit an encoder writes, so anything less would change the files."""

from __future__ import annotations

import pytest
import torch

from bmz.codec.layers import GDN

cai_layers = pytest.importorskip("compressai.layers")


def _pair(C: int, inverse: bool, seed: int):
    """bmz's and CompressAI's GDN with the same parameters, some of them below their lower bound
    (where the bound's gradient rule decides)."""
    ours, theirs = GDN(C, inverse=inverse), cai_layers.GDN(C, inverse=inverse)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        beta = ours.beta + 0.3 * torch.rand(C, generator=g)
        beta[0] = -0.5  # below beta_reparam's bound
        gamma = ours.gamma + 0.05 * torch.rand(C, C, generator=g)
        gamma[1, 0] = -0.01  # below gamma_reparam's bound
        sd = {**ours.state_dict(), "beta": beta, "gamma": gamma}
    ours.load_state_dict(sd)
    theirs.load_state_dict(sd)
    return ours, theirs


def test_gdn_state_dict_and_parameters_match_compressai():
    for inverse in (False, True):
        ours, theirs = GDN(7, inverse=inverse), cai_layers.GDN(7, inverse=inverse)
        a, b = ours.state_dict(), theirs.state_dict()
        assert list(a) == list(b)  # names and order
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        # optimiser states index parameters by position
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours = GDN(3, beta_min=1e-3, gamma_init=0.2)
    theirs = cai_layers.GDN(3, beta_min=1e-3, gamma_init=0.2)
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_forward_and_gradients_are_bit_identical_to_compressai(inverse):
    ours, theirs = _pair(6, inverse, seed=1)
    x = torch.randn(2, 6, 9, 11, generator=torch.Generator().manual_seed(2)) * 3
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert torch.equal(ya, yb)
    w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(3))
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(ours.beta.grad, theirs.beta.grad)
    assert torch.equal(ours.gamma.grad, theirs.gamma.grad)


def test_gdn_lower_bound_gradient_rule():
    """Below the bound, the gradient passes only when descent moves the value up."""
    g = GDN(1)
    bound = g.beta_reparam.lower_bound.bound
    x = torch.tensor([float(bound) - 0.1, float(bound) - 0.1, float(bound) + 0.1], requires_grad=True)
    y = g.beta_reparam.lower_bound(x)
    assert torch.equal(y.detach(), torch.stack([bound[0], bound[0], x[2].detach()]))
    (y * torch.tensor([1.0, -1.0, 1.0])).sum().backward()
    assert x.grad.tolist() == [0.0, -1.0, 1.0]
