"""Cross-domain contrastive regulariser: value and gradient against a loop from the equation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixcon.losses.multidomain import DomainContrastiveLoss, domain_class_ids, domain_contrastive_loss


def reference_loss(z: torch.Tensor, ids: list[tuple[int, ...]], tau: float, form: str) -> torch.Tensor:
    """Khosla et al. L_out (the paper) / Zhao et al. Eq. 1 as explicit loops, differentiable.

    ``ids[i]`` is what decides positives: (domain,) for the paper, (domain, class) for the
    class-aware variant. Written with Python loops over scalar tensors: slow, obviously correct.
    """
    z = z / z.norm(dim=1, keepdim=True)
    per_anchor = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        pos = [j for j in others if ids[j] == ids[i]]
        neg = [j for j in others if ids[j] != ids[i]]
        if not pos:
            continue
        sim = {j: torch.dot(z[i], z[j]) / tau for j in others}
        terms = []
        for p in pos:
            if form == "supcon":
                denom = sum(torch.exp(sim[a]) for a in others)
            else:
                denom = torch.exp(sim[p]) + sum(
                    (torch.exp(sim[n]) for n in neg), torch.zeros((), dtype=z.dtype)
                )
            terms.append(torch.log(torch.exp(sim[p]) / denom))
        per_anchor.append(-sum(terms) / len(pos))
    return sum(per_anchor) / len(per_anchor) if per_anchor else z.sum() * 0.0


@pytest.mark.parametrize("n, dim, num_domains", [(2, 3, 1), (7, 4, 2), (13, 5, 3)])
@pytest.mark.parametrize("tau", [0.1, 1.0])
@pytest.mark.parametrize("form", ["supcon", "zhao"])
def test_domain_loss_matches_reference_value_and_gradient(
    n: int, dim: int, num_domains: int, tau: float, form: str
) -> None:
    g = torch.Generator().manual_seed(n * 31 + num_domains)
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    domains = torch.randint(num_domains, (n,), generator=g)
    z_ref, z_fast = z.clone().requires_grad_(), z.clone().requires_grad_()
    expected = reference_loss(z_ref, [(int(d),) for d in domains], tau, form)
    got = domain_contrastive_loss(z_fast, domains, temperature=tau, form=form, block_size=3)  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-12)
    expected.backward()
    got.backward()
    torch.testing.assert_close(z_fast.grad, z_ref.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["supcon", "zhao"])
def test_class_aware_variant_matches_reference(form: str) -> None:
    g = torch.Generator().manual_seed(5)
    n = 14
    z = torch.randn(n, 6, generator=g, dtype=torch.float64)
    domains = torch.randint(2, (n,), generator=g)
    labels = torch.randint(3, (n,), generator=g)
    labels[[2, 9]] = 255  # ignored pixels are dropped before anything else
    keep = labels != 255
    z_ref, z_fast = z.clone().requires_grad_(), z.clone().requires_grad_()
    ids = [(int(d), int(c)) for d, c in zip(domains[keep], labels[keep], strict=True)]
    expected = reference_loss(z_ref[keep], ids, 0.2, form)
    got = domain_contrastive_loss(z_fast, domains, temperature=0.2, form=form, labels=labels)  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-12)
    expected.backward()
    got.backward()
    torch.testing.assert_close(z_fast.grad, z_ref.grad, rtol=1e-9, atol=1e-12)
    assert z_fast.grad is not None and z_fast.grad[[2, 9]].abs().sum() == 0


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    domains = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 0])
    assert torch.autograd.gradcheck(lambda t: domain_contrastive_loss(t, domains, temperature=0.5), (z,))


@pytest.mark.parametrize("n0, n1", [(2, 3), (4, 4), (5, 1)])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_analytic_value_for_two_collapsed_opposite_domains(n0: int, n1: int, tau: float) -> None:
    """Domain 0 all at e, domain 1 all at -e: each anchor of a domain of size m against k others
    has loss -log(exp(1/t) / ((m - 1) exp(1/t) + k exp(-1/t))) (L_out)."""
    e = torch.tensor([0.6, 0.8], dtype=torch.float64)
    z = torch.cat([e.expand(n0, 2), -e.expand(n1, 2)])
    domains = torch.tensor([0] * n0 + [1] * n1)

    def anchor(m: int, k: int) -> float:
        return -math.log(math.exp(1 / tau) / ((m - 1) * math.exp(1 / tau) + k * math.exp(-1 / tau)))

    per_anchor = [anchor(n0, n1)] * n0 + ([anchor(n1, n0)] * n1 if n1 > 1 else [])
    expected = sum(per_anchor) / len(per_anchor)
    assert domain_contrastive_loss(z, domains, temperature=tau).item() == pytest.approx(expected, rel=1e-12)


def test_domain_class_ids() -> None:
    domains = torch.tensor([0, 0, 1, 1, 2, 0])
    labels = torch.tensor([3, 3, 3, 255, 0, 2**31 - 1])
    ids = domain_class_ids(domains, labels)
    assert ids[0] == ids[1] and ids[1] != ids[2]  # class 3 of domain 0 is not class 3 of domain 1
    assert ids[3] == -1 and ids[4] >= 0 and len(set(ids.tolist())) == 5
    assert ids[5] != ids[2]  # the largest int32 class id does not spill into the next domain
    assert domain_class_ids(domains, labels, ignore_index=None)[3] >= 0
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        domain_class_ids(domains, labels[:3])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 20), seed=st.integers(0, 2**16), shift=st.integers(1, 5))
def test_invariances(n: int, seed: int, shift: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=g, dtype=torch.float64)
    domains = torch.randint(3, (n,), generator=g)
    loss = domain_contrastive_loss(z, domains)
    perm = torch.randperm(n, generator=g)
    torch.testing.assert_close(domain_contrastive_loss(z[perm], domains[perm]), loss)  # order
    torch.testing.assert_close(domain_contrastive_loss(3.0 * z, domains), loss)  # normalised inside
    torch.testing.assert_close(domain_contrastive_loss(z, domains * 7 + shift), loss)  # ids, not values
    assert loss.item() >= 0.0 and math.isfinite(loss.item())


# ---------------------------------------------------------------------------- module


def test_image_level_module_is_the_core_on_concatenated_embeddings() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    loss = DomainContrastiveLoss(temperature=0.2)([a, b], domains=[1, 0])
    expected = domain_contrastive_loss(
        torch.cat([a, b]), torch.tensor([1, 1, 1, 0, 0, 0, 0]), temperature=0.2
    )
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="by domain only"):
        DomainContrastiveLoss(positives="domain_class")([a, b], masks=[torch.zeros(3, 4, 4)] * 2)
    with pytest.raises(ValueError, match="dims"):
        DomainContrastiveLoss()([a, torch.randn(2, 8, 3, 3)])
    with pytest.raises(ValueError, match="2 embedding tensors but 1 domains"):
        DomainContrastiveLoss()([a, b], domains=[0])


def test_pixel_level_sampling_splits_the_budget_and_skips_ignored() -> None:
    g = torch.Generator().manual_seed(0)
    loss = DomainContrastiveLoss(positives="domain_class", max_pixels=40)
    e0, e1 = torch.randn(2, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    m0 = torch.randint(0, 3, (2, 8, 8), generator=g)  # downsampled (nearest) to 4x4
    m1 = torch.full((1, 8, 8), 255)
    m1[0, :4] = 1  # 8 labelled cells at 4x4; the rest ignored
    z, dom, labels = loss.sample([e0, e1], masks=[m0, m1], generator=g)
    assert z.shape == (40, 4) and int((dom == 1).sum()) == 8 and int((dom == 0).sum()) == 32
    assert labels is not None and not (labels == 255).any()
    assert set(labels[dom == 1].tolist()) == {1}
    # the drawn rows are rows of the inputs
    flat0 = e0.permute(0, 2, 3, 1).reshape(-1, 4)
    assert all((flat0 == row).all(1).any() for row in z[dom == 0])
    # without masks: the domain is the only label, split equally
    z, dom, labels = DomainContrastiveLoss(max_pixels=10).sample([e0, e1], generator=g)
    assert labels is None and int((dom == 0).sum()) == 5 and int((dom == 1).sum()) == 5
    with pytest.raises(ValueError, match="needs the masks"):
        loss([e0, e1])


def test_pixel_level_gradient_reaches_every_domain_and_single_domain_is_finite() -> None:
    g = torch.Generator().manual_seed(1)
    e0 = torch.randn(2, 6, 4, 4, generator=g, requires_grad=True)
    e1 = torch.randn(2, 6, 4, 4, generator=g, requires_grad=True)
    value = DomainContrastiveLoss(max_pixels=64)([e0, e1])
    value.backward()
    assert e0.grad is not None and e0.grad.abs().sum() > 0
    assert e1.grad is not None and e1.grad.abs().sum() > 0
    alone = DomainContrastiveLoss(max_pixels=16)([e0.detach()])
    assert torch.isfinite(alone) and alone > 0  # supcon: no negatives, still defined
    assert DomainContrastiveLoss(form="zhao", max_pixels=16)([e0.detach()]).item() == 0.0


def test_regulariser_separates_domains_in_a_few_steps() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g, requires_grad=True)
    domains = torch.tensor([0] * 8 + [1] * 8)
    opt = torch.optim.SGD([z], lr=5.0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = domain_contrastive_loss(z, domains, temperature=0.5)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    optimum = math.log(7 + 8 * math.exp(-4))  # two collapsed, opposite domains (see the analytic test)
    assert losses[-1] - optimum < 0.5 * (losses[0] - optimum)
    u = torch.nn.functional.normalize(z.detach(), dim=1)
    sims = u @ u.T
    within = (sims[:8, :8].sum() - 8) / 56
    across = sims[:8, 8:].mean()
    assert within > across + 0.5  # intra-domain similarity, inter-domain margin


def test_validation() -> None:
    with pytest.raises(ValueError, match="temperature"):
        DomainContrastiveLoss(temperature=0.0)
    with pytest.raises(ValueError, match="unknown form"):
        DomainContrastiveLoss(form="ntxent")
    with pytest.raises(ValueError, match="unknown positives"):
        DomainContrastiveLoss(positives="class")
    with pytest.raises(ValueError, match="max_pixels"):
        DomainContrastiveLoss(max_pixels=1)
    with pytest.raises(ValueError, match="integer"):
        domain_contrastive_loss(torch.randn(3, 2), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        domain_contrastive_loss(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one"):
        DomainContrastiveLoss()([])
