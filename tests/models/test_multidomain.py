"""A segmenter of several domains: shapes per domain, independent heads, gradient isolation, export."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pixcon.losses.multidomain import DomainContrastiveLoss
from pixcon.models import Segmenter, create_segmenter, export_domain, num_domains, to_multidomain, use_domain
from pixcon.models.domain_bn import DomainBatchNorm2d, domain_batchnorms, plain_copy
from pixcon.models.multidomain import DomainHeads, domain_parameters, shared_parameters


@pytest.fixture(scope="module")
def model() -> Segmenter:
    torch.manual_seed(0)
    return to_multidomain(create_segmenter(num_classes=3, proj_dim=16), num_classes=[3, 5])


@pytest.mark.parametrize("size", [(64, 64), (45, 67)])
def test_shapes_per_domain(model: Segmenter, size: tuple[int, int]) -> None:
    model.eval()
    x = torch.rand(2, 3, *size)
    h, w = -(-size[0] // 4), -(-size[1] // 4)
    for d, c in enumerate([3, 5]):
        with use_domain(model, d):
            logits = model(x)
            assert logits.shape == (2, c, *size) and model.num_classes == c
            emb = model.project(x)
            assert emb.shape == (2, 16, h, w)
            torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, h, w))
            both = model.forward_both(x)
        torch.testing.assert_close(both[0], logits)
        torch.testing.assert_close(both[1], emb)


def test_domain_path_equals_plain_segmenter_with_that_domains_parts() -> None:
    """Domain d's outputs are the original Segmenter's path with domain d's BN copies and head."""
    torch.manual_seed(0)
    seg = create_segmenter(num_classes=3, proj_dim=16)
    original = copy.deepcopy(seg).eval()
    md = to_multidomain(seg, num_classes=[3, 2]).eval()
    x = torch.rand(2, 3, 45, 67)
    # domain 0 keeps the segmenter's head and every BN copy starts equal: the same function
    with use_domain(md, 0):
        torch.testing.assert_close(md(x), original(x))
    with use_domain(md, 1):
        torch.testing.assert_close(md.project(x), original.project(x))
    # after domain 1's statistics move, domain 1 equals a plain copy carrying its parts
    md.train()
    with use_domain(md, 1):
        md(torch.rand(4, 3, 64, 64))
    md.eval()
    plain = plain_copy(md, 1)
    with use_domain(md, 1):
        logits, emb = md.forward_both(x)
    torch.testing.assert_close(logits, plain(x))
    torch.testing.assert_close(emb, plain.project(x))
    with use_domain(md, 0):
        assert not torch.allclose(md.project(x), emb)


def test_heads_are_independent(model: Segmenter) -> None:
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    heads = model.net.segmentation_head
    assert isinstance(heads, DomainHeads)
    assert heads.heads[0] is not heads.heads[1]
    assert not {id(p) for p in heads.heads[0].parameters()} & {id(p) for p in heads.heads[1].parameters()}
    with use_domain(model, 0):
        before = model(x)
    with torch.no_grad():
        saved = [p.clone() for p in heads.heads[1].parameters()]
        for p in heads.heads[1].parameters():
            p.add_(1.0)
    with use_domain(model, 0):
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    with torch.no_grad():
        for p, s in zip(heads.heads[1].parameters(), saved, strict=True):
            p.copy_(s)
    with use_domain(model, 1):  # indexing gives the active domain's layers (conv, upsampling)
        assert heads[0] is heads.heads[1][0] and heads[0].out_channels == 5


def test_domain0_loss_reaches_neither_domain1_head_nor_domain1_bn() -> None:
    torch.manual_seed(0)
    md = to_multidomain(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 4]).train()
    x, y = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    with use_domain(md, 0):
        F.cross_entropy(md(x), y).backward()
    for p in domain_parameters(md, 1):
        assert p.grad is None
    assert all(p.grad is None for p in md.net.segmentation_head.heads[1].parameters())
    assert all(m.bns[1].weight.grad is None for m in domain_batchnorms(md))
    projection = {id(p) for p in md.projection.parameters()}  # CE does not use it
    assert all(p.grad is not None for p in domain_parameters(md, 0) if id(p) not in projection)
    encoder_conv = md.net.encoder.conv1.weight
    assert encoder_conv.grad is not None and encoder_conv.grad.abs().sum() > 0  # shared: trained


def test_parameter_partition_and_validation(model: Segmenter) -> None:
    own = [{id(p) for p in domain_parameters(model, d)} for d in range(2)]
    shared = {id(p) for p in shared_parameters(model)}
    every = {id(p) for p in model.parameters()}
    assert not own[0] & own[1] and not (own[0] | own[1]) & shared
    assert own[0] | own[1] | shared == every
    assert {id(p) for p in model.net.segmentation_head.heads[1].parameters()} <= own[1]
    assert {id(p) for p in model.projection.parameters() if p.dim() > 1} <= shared
    assert num_domains(model) == 2
    for bad in (2, -1, 0.5):
        with pytest.raises(ValueError, match=r"domain must be an int in \[0, 2\)"), use_domain(model, bad):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="one entry per domain"):
        to_multidomain(create_segmenter(num_classes=2), num_classes=[])
    with pytest.raises(ValueError, match=">= 1 class"):
        to_multidomain(create_segmenter(num_classes=2), num_classes=[2, 0])
    plain = create_segmenter(num_classes=2, proj_dim=4)
    assert to_multidomain(plain, [2]) is plain and num_domains(plain) == 1  # a list of one: unchanged
    with use_domain(plain, 0):  # a no-op on a single-domain network
        pass
    with pytest.raises(ValueError, match=r"domain must be an int in \[0, 1\)"), use_domain(plain, 1):
        pass


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    md = to_multidomain(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 5]).train()
    with use_domain(md, 1):
        md(torch.rand(2, 3, 64, 64))  # domain 1's statistics differ from domain 0's
    state = md.state_dict()
    assert "net.segmentation_head.heads.1.0.weight" in state and "net.encoder.bn1.bns.1.running_var" in state
    other = to_multidomain(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 5])
    other.load_state_dict(state)
    md.eval()
    other.eval()
    x = torch.rand(1, 3, 64, 64)
    for d in range(2):
        with use_domain(md, d), use_domain(other, d):
            torch.testing.assert_close(other(x), md(x))


def test_one_training_step_over_two_domains_uses_every_parameter() -> None:
    """CE per domain + λ · the pixel-level regulariser: every parameter gets a gradient, so a DDP
    step that visits every domain has no unused parameter."""
    torch.manual_seed(0)
    md = to_multidomain(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 4]).train()
    batches = [
        (torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))),
        (torch.rand(3, 3, 64, 64), torch.randint(0, 4, (3, 64, 64))),
    ]
    outs = []
    for d, (x, _) in enumerate(batches):
        with use_domain(md, d):
            outs.append(md.forward_both(x))
    ce = sum(F.cross_entropy(logits, y) for (logits, _), (_, y) in zip(outs, batches, strict=True))
    pixel = DomainContrastiveLoss(positives="domain_class", max_pixels=256)(
        [emb for _, emb in outs], masks=[y for _, y in batches]
    )
    loss = ce + 0.1 * pixel
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in md.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


@pytest.mark.parametrize("shared_affine", [False, True])
def test_export_domain_is_a_plain_segmenter_of_that_domain(shared_affine: bool) -> None:
    torch.manual_seed(0)
    md = to_multidomain(
        create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 5], shared_affine=shared_affine
    ).train()
    with use_domain(md, 1):
        md(torch.rand(4, 3, 64, 64))  # domain 1's statistics move away from domain 0's
    md.eval()
    x = torch.rand(2, 3, 45, 67)
    for d, classes in enumerate([3, 5]):
        plain = export_domain(md, d)
        assert isinstance(plain, Segmenter) and plain.num_classes == classes and not plain.training
        assert not any(isinstance(m, (DomainBatchNorm2d, DomainHeads)) for m in plain.modules())
        with use_domain(md, d):
            torch.testing.assert_close(plain(x), md(x))
            torch.testing.assert_close(plain.project(x), md.project(x))
    # a copy: changing the export leaves the multi-domain network as it was
    with use_domain(md, 1):
        before = md(x)
    with torch.no_grad():
        for p in export_domain(md, 1).parameters():
            p.add_(1.0)
    with use_domain(md, 1):
        torch.testing.assert_close(md(x), before, rtol=0, atol=0)
