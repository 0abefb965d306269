"""Domain-specific batch norm: per-domain equivalence with plain BN, isolation, conversion, state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pixcon.models import create_segmenter
from pixcon.models.domain_bn import (
    DomainBatchNorm2d,
    convert_to_domain_bn,
    domain_batchnorms,
    num_domains_of,
    plain_copy,
    set_domain,
)


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5, momentum=0.3)),
    )


def _randomise_bn(module: nn.Module, seed: int) -> None:
    """Distinct affine and running statistics in every BN copy of every domain."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 9, (), generator=g)))
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
            elif isinstance(m, DomainBatchNorm2d) and m.weight is not None:
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))


def _reference(original: nn.Module, converted: nn.Module, domain: int) -> nn.Module:
    """The unconverted network whose BN layers are loaded, by hand, with domain ``domain``'s copies."""
    ref = copy.deepcopy(original)
    plain_bns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    dbns = domain_batchnorms(converted)
    assert len(plain_bns) == len(dbns)
    for bn, dbn in zip(plain_bns, dbns, strict=True):
        state = dict(dbn.bns[domain].state_dict())
        if dbn.shared_affine:
            state["weight"], state["bias"] = dbn.weight.detach(), dbn.bias.detach()
        bn.load_state_dict(state)
    return ref


@pytest.mark.parametrize("shared_affine", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_active_domain_equals_plain_network_with_that_copy(shared_affine: bool, training: bool) -> None:
    torch.manual_seed(0)
    original = _net()
    net = convert_to_domain_bn(copy.deepcopy(original), num_domains=3, shared_affine=shared_affine)
    _randomise_bn(net, seed=1)  # every domain differs from the others and from the original
    x = torch.randn(4, 3, 6, 7)
    outputs = []
    for d in range(3):
        ref = _reference(original, net, d).train(training)
        net.train(training)
        set_domain(net, d)
        out = net(x)
        torch.testing.assert_close(out, ref(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out, plain_copy(net, d).train(training)(x), rtol=1e-6, atol=1e-6)
        outputs.append(out)
    if not training or not shared_affine:  # in training, per-domain statistics do not matter
        assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("shared_affine", [False, True])
def test_conversion_preserves_the_function_for_every_domain(shared_affine: bool) -> None:
    torch.manual_seed(0)
    original = _net()
    _randomise_bn(original, seed=2)
    net = convert_to_domain_bn(copy.deepcopy(original), num_domains=2, shared_affine=shared_affine)
    x = torch.randn(3, 3, 5, 5)
    for training in (False, True):
        original.train(training)
        net.train(training)
        for d in range(2):
            with set_domain(net, d):
                torch.testing.assert_close(net(x), original(x))


def test_training_domain_1_leaves_domain_0_statistics_and_grads_alone() -> None:
    torch.manual_seed(0)
    net = convert_to_domain_bn(_net(), num_domains=2).train()
    before = [copy.deepcopy(m.bns[0].state_dict()) for m in domain_batchnorms(net)]
    set_domain(net, 1)
    net(torch.randn(4, 3, 6, 6)).square().mean().backward()
    for m, state in zip(domain_batchnorms(net), before, strict=True):
        for key, value in m.bns[0].state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        assert int(m.bns[1].num_batches_tracked) == 1
        assert not torch.equal(m.bns[1].running_mean, state["running_mean"])
        assert m.bns[0].weight.grad is None and m.bns[0].bias.grad is None
        assert m.bns[1].weight.grad is not None


def test_set_domain_is_a_setter_and_a_context_manager() -> None:
    net = convert_to_domain_bn(_net(), num_domains=3)
    set_domain(net, 2)
    assert {m.active for m in domain_batchnorms(net)} == {2}
    with set_domain(net, 1):
        assert {m.active for m in domain_batchnorms(net)} == {1}
    assert {m.active for m in domain_batchnorms(net)} == {2}
    with pytest.raises(RuntimeError), set_domain(net, 0):
        raise RuntimeError("restored even on error")
    assert {m.active for m in domain_batchnorms(net)} == {2}
    set_domain(net, torch.tensor(1))  # 0-d integer tensors and numpy ints count as ints
    assert {m.active for m in domain_batchnorms(net)} == {1}
    for bad in (3, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"domain must be an int in \[0, 3\)"):
            set_domain(net, bad)  # type: ignore[arg-type]
    assert {m.active for m in domain_batchnorms(net)} == {1}  # nothing changed by a failed call
    with pytest.raises(ValueError, match="no DomainBatchNorm2d"):
        set_domain(_net(), 0)


def test_conversion_edge_cases() -> None:
    net = convert_to_domain_bn(_net(), num_domains=2)
    assert convert_to_domain_bn(net, num_domains=2) is net  # idempotent
    assert len(domain_batchnorms(net)) == 2 and num_domains_of(net) == 2
    with pytest.raises(ValueError, match="already converted with num_domains=2"):
        convert_to_domain_bn(net.get_submodule("1"), num_domains=3)
    with pytest.raises(ValueError, match="num_domains must be >= 1"):
        convert_to_domain_bn(_net(), num_domains=0)
    bn = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    single = convert_to_domain_bn(bn, num_domains=2)  # a bare BN is replaced, as SyncBatchNorm does
    assert isinstance(single, DomainBatchNorm2d) and not single.bns[0].affine
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(single(x), bn(x))
    # frozen layers stay frozen; dtype and mode follow the original
    frozen = nn.BatchNorm2d(2).double().eval()
    frozen.weight.requires_grad_(False)
    dbn = convert_to_domain_bn(frozen, num_domains=2)
    assert not dbn.bns[1].weight.requires_grad and dbn.bns[1].bias.requires_grad
    assert dbn.bns[1].running_mean.dtype == torch.float64 and not dbn.training


@pytest.mark.parametrize("shared_affine", [False, True])
def test_state_dict_round_trip(shared_affine: bool) -> None:
    torch.manual_seed(0)
    net = convert_to_domain_bn(_net(), num_domains=2, shared_affine=shared_affine)
    _randomise_bn(net, seed=3)
    state = net.state_dict()
    assert "1.bns.1.running_mean" in state and "3.1.bns.0.num_batches_tracked" in state
    assert ("1.weight" in state) == shared_affine and ("1.bns.0.weight" in state) != shared_affine
    other = convert_to_domain_bn(_net(), num_domains=2, shared_affine=shared_affine)
    other.load_state_dict(state)  # strict
    x = torch.randn(2, 3, 5, 5)
    net.eval()
    other.eval()
    for d in range(2):
        set_domain(net, d)
        set_domain(other, d)
        torch.testing.assert_close(other(x), net(x), rtol=0, atol=0)


def test_real_segmenter_converts_and_runs_every_domain() -> None:
    torch.manual_seed(0)
    model = create_segmenter(num_classes=4, proj_dim=8)
    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    original = copy.deepcopy(model).eval()
    convert_to_domain_bn(model, num_domains=2)
    assert len(domain_batchnorms(model)) == num_bn
    assert not any(
        isinstance(m, nn.BatchNorm2d) and not any(m is c for d in domain_batchnorms(model) for c in d.bns)
        for m in model.modules()
    )  # every BatchNorm2d left is a domain copy
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with set_domain(model, 1):
        torch.testing.assert_close(model(x), original(x))  # identical copies: the same function
    # a training batch of domain 1 moves only domain 1's statistics
    model.train()
    stats0 = [m.bns[0].running_mean.clone() for m in domain_batchnorms(model)]
    with set_domain(model, 1):
        logits, proj = model.forward_both(x)
    assert logits.shape == (2, 4, 64, 64) and proj.shape == (2, 8, 16, 16)
    for m, s in zip(domain_batchnorms(model), stats0, strict=True):
        torch.testing.assert_close(m.bns[0].running_mean, s, rtol=0, atol=0)
    model.eval()
    outs = []
    for d in range(2):
        with set_domain(model, d):
            outs.append(model(x))
        assert torch.isfinite(outs[-1]).all()
    assert not torch.allclose(outs[0], outs[1])  # domain 1 now has its own statistics
