"""HCSC: selective pixel contrast and prototype contrast against slow loops, selection, bank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixcon.losses.contrastive import pixel_contrastive_loss
from pixcon.losses.hcsc import (
    HCSCLoss,
    PrototypeBank,
    keep_probability,
    membership,
    prototype_contrastive_loss,
    select,
    selective_pixel_contrastive_loss,
)


def _ref_selective(
    z: torch.Tensor, labels: list[int], weights: list[list[list[float]]], t: float
) -> torch.Tensor:
    """HCSC's ICSC with Zhao et al.'s pixel form, as explicit loops (autograd through scalars).

    weights[l][i][n]: weight of negative n for anchor i at level l.
    """
    z = z / z.norm(dim=1, keepdim=True)
    n = len(labels)
    levels = []
    for w in weights:
        per_anchor = []
        for i in range(n):
            positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
            if not positives:
                continue
            neg_sum = sum(
                (w[i][k] * torch.exp(z[i] @ z[k] / t) for k in range(n) if labels[k] != labels[i]),
                start=torch.zeros((), dtype=z.dtype),
            )
            terms = [
                -torch.log(torch.exp(z[i] @ z[p] / t) / (torch.exp(z[i] @ z[p] / t) + neg_sum))
                for p in positives
            ]
            per_anchor.append(sum(terms) / len(terms))
        levels.append(sum(per_anchor) / len(per_anchor))
    return sum(levels) / len(levels)


def _ref_membership(z: torch.Tensor, protos: torch.Tensor, phi: torch.Tensor) -> list[list[float]]:
    z = z / z.norm(dim=1, keepdim=True)
    out = []
    for j in range(len(z)):
        e = [math.exp(float(z[j] @ protos[k]) / float(phi[k])) for k in range(len(protos))]
        out.append([v / sum(e) for v in e])
    return out


def _case(n: int, d: int, classes: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(classes, (n,), generator=g)
    protos = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    phi = 0.1 + 0.4 * torch.rand(k, generator=g, dtype=torch.float64)
    return z, labels, protos, phi


@pytest.mark.parametrize(("n", "d", "classes", "k"), [(7, 3, 2, 3), (12, 5, 3, 4)])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_expected_selection_matches_reference(n: int, d: int, classes: int, k: int, t: float) -> None:
    z, labels, protos, phi = _case(n, d, classes, k, seed=n + k)
    coarse = F.normalize(protos[:2] + 0.1, dim=1)
    member = [membership(z, protos, phi), membership(z, coarse, 0.3)]
    clusters = [m.argmax(1) for m in member]
    # reference weights straight from the definition p_sel(n | i) = 1 - P(n in cluster of i)
    ref_members = [
        _ref_membership(z, protos, phi),
        _ref_membership(z, coarse, torch.full((2,), 0.3, dtype=torch.float64)),
    ]
    weights = [
        [[1 - rm[q][int(c[i])] for q in range(n)] for i in range(n)]
        for rm, c in zip(ref_members, clusters, strict=True)
    ]
    zr = z.clone().requires_grad_(True)
    expected = _ref_selective(zr, labels.tolist(), weights, t)
    expected.backward()
    zs = z.clone().requires_grad_(True)
    got = selective_pixel_contrastive_loss(zs, labels, member, clusters, t, "expected", block_size=3)
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)
    torch.testing.assert_close(zs.grad, zr.grad, rtol=1e-8, atol=1e-10)


def test_without_levels_or_selection_it_is_the_plain_pixel_loss() -> None:
    z, labels, protos, phi = _case(20, 4, 3, 3, seed=0)
    plain = pixel_contrastive_loss(z, labels, 0.2, ignore_index=None)
    assert selective_pixel_contrastive_loss(z, labels, temperature=0.2).item() == pytest.approx(
        plain.item(), rel=1e-12
    )
    member = [membership(z, protos, phi)]
    none = selective_pixel_contrastive_loss(z, labels, member, [member[0].argmax(1)], 0.2, "none")
    assert none.item() == pytest.approx(plain.item(), rel=1e-12)


def test_hard_selection_drops_exactly_the_negatives_in_the_anchors_cluster() -> None:
    # 6 pixels, classes [0, 0, 1, 1, 2, 2]; level-0 clusters [0, 0, 0, 1, 1, 1].
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    clusters = torch.tensor([0, 0, 0, 1, 1, 1])
    keep = keep_probability(F.one_hot(clusters, 2).double(), clusters)
    expected = torch.tensor(
        [
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ],
        dtype=torch.float64,
    )
    assert torch.equal(keep, expected)
    # so pixel 2 (class 1, cluster 0) loses negatives 0 and 1 and keeps 4 and 5; pixel 3 the reverse
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    member = [F.one_hot(clusters, 2).double()]
    hard = selective_pixel_contrastive_loss(z, labels, member, [clusters], 0.3, "hard")
    ref = _ref_selective(z, labels.tolist(), [expected.tolist()], 0.3)
    assert hard.item() == pytest.approx(ref.item(), rel=1e-12)
    assert hard.item() != pytest.approx(pixel_contrastive_loss(z, labels, 0.3).item(), rel=1e-3)
    # a Bernoulli draw with probabilities 0 and 1 selects exactly the same negatives
    sampled = selective_pixel_contrastive_loss(z, labels, member, [clusters], 0.3, "sample")
    assert sampled.item() == pytest.approx(hard.item(), rel=1e-12)
    # Pixels 0, 1 (class 0) and 2 (class 1) share cluster 0, pixel 3 (class 2) is in cluster 1: the
    # only anchors (0 and 1) drop pixel 2 and keep pixel 3, so pixel 2 takes no part at all.
    labels4, clusters4 = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 0, 1])
    z4 = torch.randn(
        4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True
    )
    dropped = selective_pixel_contrastive_loss(
        z4, labels4, [F.one_hot(clusters4, 2).double()], [clusters4], 0.3, "hard"
    )
    dropped.backward()
    assert torch.equal(z4.grad[2], torch.zeros(3, dtype=torch.float64))
    assert z4.grad[3].abs().sum() > 0
    without_2 = pixel_contrastive_loss(z4[[0, 1, 3]], labels4[[0, 1, 3]], 0.3)
    assert dropped.item() == pytest.approx(without_2.item(), rel=1e-12)


def test_sampled_selection_is_seeded_rate_correct_and_differentiable() -> None:
    keep = torch.full((400, 500), 0.3, dtype=torch.float64)
    drawn = select(keep, "sample", torch.Generator().manual_seed(0))
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    assert drawn.mean().item() == pytest.approx(0.3, abs=0.005)
    assert torch.equal(drawn, select(keep, "sample", torch.Generator().manual_seed(0)))
    assert torch.equal(select(keep, "expected"), keep) and torch.equal(
        select(keep, "none"), torch.ones_like(keep)
    )

    z, labels, protos, phi = _case(10, 3, 2, 3, seed=5)
    member = [membership(z, protos, phi)]
    clusters = [member[0].argmax(1)]

    def loss(x: torch.Tensor) -> torch.Tensor:  # one seed per call: the same selection every time
        gen = torch.Generator().manual_seed(11)
        return selective_pixel_contrastive_loss(
            x, labels, member, clusters, 0.4, "sample", generator=gen, block_size=4
        )

    # the blocks are recomputed in backward (checkpointing): the gradient must see the same draw
    assert torch.autograd.gradcheck(loss, (z.clone().requires_grad_(True),))
    with torch.no_grad():
        assert loss(z).item() == pytest.approx(loss(z.clone().requires_grad_(True)).item(), rel=1e-12)


def test_ignored_pixels_and_block_sizes() -> None:
    z, labels, protos, phi = _case(15, 4, 3, 3, seed=3)
    member = [membership(z, protos, phi)]
    clusters = [member[0].argmax(1)]
    full = selective_pixel_contrastive_loss(z, labels, member, clusters, 0.2, "expected")
    for block in (1, 4, 15):
        blocked = selective_pixel_contrastive_loss(
            z, labels, member, clusters, 0.2, "expected", block_size=block
        )
        assert blocked.item() == pytest.approx(full.item(), rel=1e-12)
    with_ignored = torch.cat([labels, torch.tensor([255, 255])])
    z2 = torch.cat([z, torch.randn(2, 4, dtype=torch.float64)])
    m2 = [torch.cat([member[0], torch.full((2, 3), 1 / 3, dtype=torch.float64)])]
    c2 = [torch.cat([clusters[0], torch.tensor([0, 1])])]
    # the two ignored pixels are dropped as anchors and as candidates
    assert selective_pixel_contrastive_loss(
        z2, with_ignored, m2, c2, 0.2, "expected"
    ).item() == pytest.approx(full.item(), rel=1e-12)
    empty = selective_pixel_contrastive_loss(z[:1].requires_grad_(True), labels[:1], temperature=0.2)
    assert empty.item() == 0.0 and empty.requires_grad


def _ref_proto(z, clusters, protos, phi, keep) -> torch.Tensor:
    z = z / z.norm(dim=1, keepdim=True)
    losses = []
    for i in range(len(z)):
        a = int(clusters[i])
        pos = torch.exp(z[i] @ protos[a] / phi[a])
        neg = sum(keep[i][j] * torch.exp(z[i] @ protos[j] / phi[j]) for j in range(len(protos)) if j != a)
        losses.append(-torch.log(pos / (pos + neg)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize(("n", "k"), [(5, 3), (9, 6)])
@pytest.mark.parametrize("masked", [False, True])
def test_prototype_contrast_matches_reference(n: int, k: int, masked: bool) -> None:
    z, _, protos, phi = _case(n, 4, 2, k, seed=k)
    g = torch.Generator().manual_seed(n)
    clusters = torch.randint(k, (n,), generator=g)
    keep = (
        (torch.rand(n, k, generator=g) < 0.5).double()
        if masked
        else torch.rand(n, k, generator=g, dtype=torch.float64)
    )
    zr, zs = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    expected = _ref_proto(zr, clusters, protos, phi, keep.tolist())
    expected.backward()
    got = prototype_contrastive_loss(zs, clusters, protos, phi, keep)
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(zs.grad, zr.grad, rtol=1e-8, atol=1e-12)
    # scalar temperature, every negative kept
    ones = torch.ones(n, k, dtype=torch.float64)
    plain = _ref_proto(z, clusters, protos, torch.full((k,), 0.25, dtype=torch.float64), ones.tolist())
    assert prototype_contrastive_loss(z, clusters, protos, 0.25).item() == pytest.approx(
        plain.item(), rel=1e-10
    )


def test_prototype_selection_drops_prototypes_sharing_the_positives_parent() -> None:
    # 5 fine prototypes with parents [0, 0, 1, 1, 1]; an anchor in prototype 3 (parent 1) keeps the
    # negative prototypes 0 and 1 only; an anchor in prototype 0 keeps 2, 3 and 4.
    parents = torch.tensor([0, 0, 1, 1, 1])
    clusters = torch.tensor([3, 0])
    keep = keep_probability(F.one_hot(parents, 2).double(), parents[clusters])
    assert torch.equal(keep, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.float64))
    soft = keep_probability(
        torch.tensor([[0.9, 0.1]] * 2 + [[0.2, 0.8]] * 3, dtype=torch.float64), parents[clusters]
    )
    torch.testing.assert_close(soft[0], torch.tensor([0.9, 0.9, 0.2, 0.2, 0.2], dtype=torch.float64))


def test_membership_is_a_softmax_over_prototypes() -> None:
    z, _, protos, phi = _case(6, 3, 2, 4, seed=1)
    got = membership(z, protos, phi)
    torch.testing.assert_close(got, torch.tensor(_ref_membership(z, protos, phi), dtype=torch.float64))
    torch.testing.assert_close(got.sum(1), torch.ones(6, dtype=torch.float64))


def test_bank_is_fifo_and_assigns_along_the_tree() -> None:
    bank = PrototypeBank(capacity=40, num_prototypes=(8, 2), iters=10)
    with pytest.raises(RuntimeError, match="fewer than"):
        bank.refresh()
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(30, 5, generator=g), torch.randn(30, 5, generator=g)
    bank.add(first)
    assert bank.count == 30 and not bank.full
    bank.add(second)
    assert bank.full and bank.count == 40
    stored = {tuple(r) for r in bank.memory.round(decimals=5).tolist()}
    newest = {
        tuple(r) for r in F.normalize(torch.cat([first[20:], second]), dim=1).round(decimals=5).tolist()
    }
    assert stored == newest  # the 20 oldest rows were overwritten
    h = bank.refresh()
    assert bank.ready and bank.refreshes == 1
    z = torch.randn(17, 5, generator=g)
    levels = bank.assign(z)
    assert torch.equal(levels[0], (F.normalize(z, dim=1) @ h.centroids[0].t()).argmax(1))
    assert torch.equal(levels[1], h.parents[0][levels[0]])
    with pytest.raises(ValueError, match="capacity"):
        PrototypeBank(capacity=4, num_prototypes=(8,))


def _dense(b: int = 2, d: int = 6, h: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    proj = F.normalize(torch.randn(b, d, h, h, generator=g), dim=1).requires_grad_(True)
    masks = torch.randint(3, (b, 4 * h, 4 * h), generator=g)
    return proj, masks


def test_hcsc_loss_refreshes_itself_and_starts_as_the_plain_loss() -> None:
    loss = HCSCLoss(
        num_prototypes=(8, 2),
        bank_size=64,
        bank_per_step=40,
        refresh_every=3,
        max_pixels=10_000,
        kmeans_iters=5,
    )
    proj, masks = _dense()
    out = loss(proj, masks)
    # before the first refresh: no prototypes, the plain pixel loss over every (downsampled) pixel
    labels = masks[:, ::4, ::4].flatten()
    z = proj.permute(0, 2, 3, 1).reshape(-1, 6)
    assert out["instance"].item() == pytest.approx(pixel_contrastive_loss(z, labels, 0.2).item(), rel=1e-6)
    assert out["proto"].item() == 0.0 and not loss.bank.ready
    loss(proj, masks)  # the bank is full after this call
    assert not loss.bank.ready
    out = loss(proj, masks)  # refreshed at the start of this call
    assert loss.bank.refreshes == 1 and out["proto"].item() > 0
    (out["instance"] + out["proto"]).backward()
    assert proj.grad is not None and torch.isfinite(proj.grad).all() and proj.grad.abs().sum() > 0
    for _ in range(3):
        loss(proj, masks)
    assert loss.bank.refreshes == 2  # every refresh_every calls
    calls, count = loss.calls_since_refresh, loss.bank.count
    loss.eval()
    loss(proj, masks)
    # evaluation neither fills the bank nor advances the refresh schedule
    assert (loss.bank.refreshes, loss.calls_since_refresh, loss.bank.count) == (2, calls, count)


@pytest.mark.parametrize("selection", ["sample", "expected", "hard", "none"])
def test_hcsc_loss_modes_are_finite(selection: str) -> None:
    loss = HCSCLoss(
        num_prototypes=(8, 4, 2),
        bank_size=32,
        bank_per_step=32,
        refresh_every=1,
        max_pixels=64,
        selection=selection,
        kmeans_iters=3,
        use_concentration=selection != "hard",
    )
    proj, masks = _dense(seed=1)
    loss(proj, masks)
    out = loss(proj, masks)
    assert loss.bank.ready
    total = out["instance"] + out["proto"]
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(proj.grad).all()


def test_hcsc_loss_validates() -> None:
    with pytest.raises(ValueError, match="selection"):
        HCSCLoss(selection="greedy")
    with pytest.raises(ValueError, match="temperature"):
        HCSCLoss(temperature=0.0)
    with pytest.raises(ValueError, match="non-increasing"):
        HCSCLoss(num_prototypes=(4, 8))


def test_hcsc_loss_wires_a_given_hierarchy_into_both_terms() -> None:
    from pixcon.clustering import Hierarchy

    angles = torch.tensor([0.0, 90.0, 180.0, 270.0]) * math.pi / 180
    fine = torch.stack([angles.cos(), angles.sin()], dim=1).double()  # (4, 2)
    coarse = F.normalize(torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64), dim=1)
    parents = torch.tensor([0, 0, 1, 1])
    phis = [
        torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64),
        torch.tensor([0.15, 0.25], dtype=torch.float64),
    ]
    loss = HCSCLoss(num_prototypes=(4, 2), bank_size=4, selection="hard", max_pixels=10_000).eval()
    loss.bank.hierarchy = Hierarchy([fine, coarse], [parents], [], phis)
    g = torch.Generator().manual_seed(7)
    proj = F.normalize(torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64), dim=1)
    masks = torch.randint(3, (1, 16, 16), generator=g)
    out = loss(proj, masks)

    z = proj.permute(0, 2, 3, 1).reshape(16, 2)
    y = masks[:, ::4, ::4].flatten()
    c0 = (z @ fine.t()).argmax(1)
    c1 = parents[c0]
    weights = [[[float(c[q] != c[i]) for q in range(16)] for i in range(16)] for c in (c0, c1)]
    assert out["instance"].item() == pytest.approx(
        _ref_selective(z, y.tolist(), weights, 0.2).item(), rel=1e-9
    )
    keep0 = [[float(parents[j] != parents[c0[i]]) for j in range(4)] for i in range(16)]
    ones = [[1.0, 1.0]] * 16
    expected_proto = (_ref_proto(z, c0, fine, phis[0], keep0) + _ref_proto(z, c1, coarse, phis[1], ones)) / 2
    assert out["proto"].item() == pytest.approx(expected_proto.item(), rel=1e-9)
