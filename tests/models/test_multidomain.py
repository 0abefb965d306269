"""MultiDomainSegmenter: shapes per domain, independent heads, gradient isolation, one full step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pixcon.losses.multidomain import DomainContrastiveLoss
from pixcon.models import create_segmenter
from pixcon.models.domain_bn import domain_batchnorms, plain_copy
from pixcon.models.multidomain import MultiDomainSegmenter


@pytest.fixture(scope="module")
def model() -> MultiDomainSegmenter:
    torch.manual_seed(0)
    return MultiDomainSegmenter(
        create_segmenter(num_classes=3, proj_dim=16), num_classes=[3, 5], image_proj_dim=8
    )


@pytest.mark.parametrize("size", [(64, 64), (45, 67)])
def test_shapes_per_domain(model: MultiDomainSegmenter, size: tuple[int, int]) -> None:
    model.eval()
    x = torch.rand(2, 3, *size)
    h, w = -(-size[0] // 4), -(-size[1] // 4)
    for d, c in enumerate([3, 5]):
        logits = model(x, d)
        assert logits.shape == (2, c, *size)
        emb = model.project(x, d)
        assert emb.shape == (2, 16, h, w)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, h, w))
        both = model.forward_both(x, d)
        out = model.forward_all(x, d)
        torch.testing.assert_close(both[0], logits)
        torch.testing.assert_close(both[1], emb)
        torch.testing.assert_close(out.logits, logits)
        torch.testing.assert_close(out.embeddings, emb)
        image = model.embed_image(x, d)
        assert image.shape == (2, 8)
        torch.testing.assert_close(image.norm(dim=1), torch.ones(2))
        torch.testing.assert_close(out.image_embeddings, image)


def test_domain_path_equals_plain_segmenter_with_that_domains_parts() -> None:
    """forward(x, d) is the original Segmenter's path with domain d's BN copies and head."""
    torch.manual_seed(0)
    seg = create_segmenter(num_classes=3, proj_dim=16)
    original = copy.deepcopy(seg).eval()
    md = MultiDomainSegmenter(seg, num_classes=[3, 2]).eval()
    x = torch.rand(2, 3, 45, 67)
    # domain 0 keeps the segmenter's head and every BN copy starts equal: the same function
    torch.testing.assert_close(md(x, 0), original(x))
    torch.testing.assert_close(md.project(x, 1), original.project(x))
    # after domain 1's statistics move, domain 1 equals a plain copy carrying its parts
    md.train()
    md(torch.rand(4, 3, 64, 64), 1)
    md.eval()
    plain = plain_copy(md.segmenter, 1)
    plain.net.segmentation_head = md.heads[1]
    logits, emb = md.forward_both(x, 1)
    torch.testing.assert_close(logits, plain(x))
    torch.testing.assert_close(emb, plain.project(x))
    assert not torch.allclose(md.project(x, 0), emb)


def test_heads_are_independent(model: MultiDomainSegmenter) -> None:
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    assert model.heads[0] is not model.heads[1]
    assert not {id(p) for p in model.heads[0].parameters()} & {id(p) for p in model.heads[1].parameters()}
    before = model(x, 0)
    with torch.no_grad():
        saved = [p.clone() for p in model.heads[1].parameters()]
        for p in model.heads[1].parameters():
            p.add_(1.0)
    torch.testing.assert_close(model(x, 0), before, rtol=0, atol=0)
    with torch.no_grad():
        for p, s in zip(model.heads[1].parameters(), saved, strict=True):
            p.copy_(s)
    model.reset_classifier(1)
    torch.testing.assert_close(model(x, 0), before, rtol=0, atol=0)
    assert model.segmenter.net.segmentation_head.__class__.__name__ == "Identity"


def test_domain0_loss_reaches_neither_domain1_head_nor_domain1_bn() -> None:
    torch.manual_seed(0)
    md = MultiDomainSegmenter(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 4]).train()
    x, y = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    F.cross_entropy(md(x, 0), y).backward()
    for p in md.domain_parameters(1):
        assert p.grad is None
    assert all(p.grad is None for p in md.heads[1].parameters())
    assert all(m.bns[1].weight.grad is None for m in domain_batchnorms(md.segmenter))
    projection = {id(p) for p in md.segmenter.projection.parameters()}  # CE does not use it
    assert all(p.grad is not None for p in md.domain_parameters(0) if id(p) not in projection)
    encoder_conv = md.segmenter.net.encoder.conv1.weight
    assert encoder_conv.grad is not None and encoder_conv.grad.abs().sum() > 0  # shared: trained


def test_parameter_partition_and_validation(model: MultiDomainSegmenter) -> None:
    own = [{id(p) for p in model.domain_parameters(d)} for d in range(2)]
    shared = {id(p) for p in model.shared_parameters()}
    every = {id(p) for p in model.parameters()}
    assert not own[0] & own[1] and not (own[0] | own[1]) & shared
    assert own[0] | own[1] | shared == every
    assert {id(p) for p in model.heads[1].parameters()} <= own[1]
    assert {id(p) for p in model.segmenter.projection.parameters() if p.dim() > 1} <= shared
    x = torch.rand(1, 3, 32, 32)
    for bad in (2, -1, 0.5):
        with pytest.raises(ValueError, match=r"domain must be an int in \[0, 2\)"):
            model(x, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one entry per domain"):
        MultiDomainSegmenter(create_segmenter(num_classes=2), num_classes=[])
    with pytest.raises(ValueError, match=">= 1 class"):
        MultiDomainSegmenter(create_segmenter(num_classes=2), num_classes=[2, 0])
    no_image = MultiDomainSegmenter(create_segmenter(num_classes=2, proj_dim=4), [2, 2], image_proj_dim=None)
    no_image.eval()  # batch of one: the ASPP's pooled BN needs eval mode
    assert no_image.forward_all(x, 1).image_embeddings is None
    with pytest.raises(ValueError, match="no image head"):
        no_image.embed_image(x, 0)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    md = MultiDomainSegmenter(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 5]).train()
    md(torch.rand(2, 3, 64, 64), 1)  # domain 1's statistics differ from domain 0's
    state = md.state_dict()
    assert "heads.1.0.weight" in state and "segmenter.net.encoder.bn1.bns.1.running_var" in state
    other = MultiDomainSegmenter(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 5])
    other.load_state_dict(state)
    md.eval()
    other.eval()
    x = torch.rand(1, 3, 64, 64)
    for d in range(2):
        torch.testing.assert_close(other.forward_all(x, d).logits, md.forward_all(x, d).logits)


def test_one_training_step_over_two_domains_uses_every_parameter() -> None:
    """CE per domain + λ · (image-level and pixel-level) regulariser: every parameter gets a gradient,
    so a DDP step that visits every domain has no unused parameter."""
    torch.manual_seed(0)
    md = MultiDomainSegmenter(create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 4]).train()
    batches = [
        (torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))),
        (torch.rand(3, 3, 64, 64), torch.randint(0, 4, (3, 64, 64))),
    ]
    outs = [md.forward_all(x, d) for d, (x, _) in enumerate(batches)]
    ce = sum(F.cross_entropy(o.logits, y) for o, (_, y) in zip(outs, batches, strict=True))
    image = DomainContrastiveLoss(temperature=0.1)([o.image_embeddings for o in outs])
    pixel = DomainContrastiveLoss(positives="domain_class", max_pixels=256)(
        [o.embeddings for o in outs], masks=[y for _, y in batches]
    )
    loss = ce + 0.1 * image + 0.1 * pixel
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in md.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_forward_with_image_equals_forward_all_without_the_pixel_head(model: MultiDomainSegmenter) -> None:
    model.eval()
    x = torch.rand(2, 3, 45, 67)
    for d in range(2):
        logits, image = model.forward_with_image(x, d)
        out = model.forward_all(x, d)
        torch.testing.assert_close(logits, out.logits)
        torch.testing.assert_close(image, out.image_embeddings)
    calls = []
    handle = model.segmenter.projection.register_forward_hook(lambda *_: calls.append(1))
    model.forward_with_image(x, 0)
    handle.remove()
    assert not calls  # the pixel projection head does not run (DDP would wait for its gradients)
    no_image = MultiDomainSegmenter(create_segmenter(num_classes=2, proj_dim=4), [2, 2], image_proj_dim=None)
    with pytest.raises(ValueError, match="no image head"):
        no_image.forward_with_image(x, 0)


@pytest.mark.parametrize("shared_affine", [False, True])
def test_export_domain_is_a_plain_segmenter_of_that_domain(shared_affine: bool) -> None:
    from pixcon.models import Segmenter
    from pixcon.models.domain_bn import DomainBatchNorm2d
    from pixcon.models.multidomain import export_domain

    torch.manual_seed(0)
    md = MultiDomainSegmenter(
        create_segmenter(num_classes=3, proj_dim=8), num_classes=[3, 5], shared_affine=shared_affine
    ).train()
    md(torch.rand(4, 3, 64, 64), 1)  # domain 1's statistics move away from domain 0's
    md.eval()
    x = torch.rand(2, 3, 45, 67)
    for d, classes in enumerate([3, 5]):
        plain = export_domain(md, d)
        assert isinstance(plain, Segmenter) and plain.num_classes == classes and not plain.training
        assert not any(isinstance(m, DomainBatchNorm2d) for m in plain.modules())
        torch.testing.assert_close(plain(x), md(x, d))
        torch.testing.assert_close(plain.project(x), md.project(x, d))
    # a copy: changing the export leaves the multi-domain network as it was
    before = md(x, 1)
    with torch.no_grad():
        for p in export_domain(md, 1).parameters():
            p.add_(1.0)
    torch.testing.assert_close(md(x, 1), before, rtol=0, atol=0)
