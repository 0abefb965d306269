"""The layer-wise gradient distance and both matching rules against references written from the
equations (DC Eq. 8-10, DCC Sec. 3) in float64: loops over output nodes, a two-layer network
whose parameter gradients are written out by hand, and finite differences for the gradient of the
matching loss w.r.t. the synthetic samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixcon.condense.matching import (
    gradient_distance,
    layer_distance,
    matched_parameters,
    matching_loss,
    matching_rule,
)

EPS = 1e-6


def reference_layer_distance(a: np.ndarray, b: np.ndarray, eps: float = EPS) -> float:
    """DC Eq. 10 as a loop over output nodes: sum_i 1 - <A_i, B_i> / (|A_i| |B_i| + eps)."""
    if a.ndim == 1:
        return 0.0  # biases are left out
    total = 0.0
    for i in range(a.shape[0]):
        ai, bi = a[i].ravel(), b[i].ravel()
        dot = sum(float(x) * float(y) for x, y in zip(ai, bi, strict=True))
        total += 1.0 - dot / (math.sqrt(float(ai @ ai)) * math.sqrt(float(bi @ bi)) + eps)
    return total


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (4, 5, 2), (6, 7), (5, 1), (1, 9)])
def test_layer_distance_matches_reference(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(len(shape))
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    expected = reference_layer_distance(a.numpy(), b.numpy())
    assert layer_distance(a, b).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_layer_distance_known_values() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    same = layer_distance(a, 3 * a, eps=0.0)
    opposite = layer_distance(a, -a, eps=0.0)
    orthogonal = layer_distance(a[:2], a[:2].flip(1), eps=0.0)
    assert same.item() == pytest.approx(0.0, abs=1e-12)  # cosine 1 on every row
    assert opposite.item() == pytest.approx(6.0)  # cosine -1 on 3 rows
    assert orthogonal.item() == pytest.approx(2.0)  # cosine 0 on 2 rows
    assert layer_distance(torch.ones(5), torch.zeros(5)).item() == 0.0  # 1-D: ignored


def test_layer_distance_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: layer_distance(x, y), (a, b))


def test_distance_errors() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        layer_distance(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="2 synthetic gradients but 1"):
        gradient_distance([torch.zeros(2, 2)] * 2, [torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="no gradients"):
        gradient_distance([], [])


# --- the matching rules on a network whose gradients are written out by hand ---------------------


class TinyNet:
    """x (n, D) -> tanh(x W1^T + b1) W2^T + b2 -> logits (n, C); float64 weights."""

    def __init__(self, d: int, h: int, c: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.w1, self.b1 = rng.normal(size=(h, d)), rng.normal(size=h) * 0.1
        self.w2, self.b2 = rng.normal(size=(c, h)) * 0.5, rng.normal(size=c) * 0.1

    def reference_grads(self, x: np.ndarray, label: int) -> list[np.ndarray]:
        """d/dW of the mean cross-entropy of samples x (all of class `label`), by hand:
        dz = (softmax(z) - onehot) / n, dW2 = dz^T h, dW1 = ((dz W2) * (1 - h^2))^T x."""
        n = len(x)
        hid = np.tanh(x @ self.w1.T + self.b1)  # (n, H)
        z = hid @ self.w2.T + self.b2  # (n, C)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = p.copy()
        dz[:, label] -= 1.0
        dz /= n
        dw2 = dz.T @ hid  # (C, H)
        dw1 = ((dz @ self.w2) * (1.0 - hid**2)).T @ x  # (H, D)
        return [dw1, dw2]

    def torch_params(self) -> list[torch.Tensor]:
        return [torch.tensor(w, requires_grad=True) for w in (self.w1, self.b1, self.w2, self.b2)]

    @staticmethod
    def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = params
        return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def reference_matching_loss(
    net: TinyNet, rule: str, syn: list[np.ndarray], real: list[np.ndarray], eps: float = EPS
) -> float:
    """DC: sum_c D(G^S_c, G^T_c); DCC: D(mean_c G^S_c, mean_c G^T_c); D = sum over layers of Eq. 10."""
    gs = [net.reference_grads(x, c) for c, x in enumerate(syn)]
    gt = [net.reference_grads(x, c) for c, x in enumerate(real)]
    if rule == "dc":
        return sum(
            reference_layer_distance(a, b, eps)
            for c in range(len(syn))
            for a, b in zip(gs[c], gt[c], strict=True)
        )
    num = len(syn)
    mean_s = [sum(gs[c][layer] for c in range(num)) / num for layer in range(2)]
    mean_t = [sum(gt[c][layer] for c in range(num)) / num for layer in range(2)]
    return sum(reference_layer_distance(a, b, eps) for a, b in zip(mean_s, mean_t, strict=True))


def _torch_loss(net: TinyNet, rule: str, syn: torch.Tensor, real: list[np.ndarray], ipc: int) -> torch.Tensor:
    params = net.torch_params()
    syn_losses, real_losses = [], []
    for c, xr in enumerate(real):
        xs = syn[c * ipc : (c + 1) * ipc]
        syn_losses.append(F.cross_entropy(TinyNet.forward(params, xs), torch.full((ipc,), c)))
        xr_t = torch.tensor(xr)
        real_losses.append(F.cross_entropy(TinyNet.forward(params, xr_t), torch.full((len(xr),), c)))
    weights = [params[0], params[2]]  # the 2-D ones; biases contribute 0 either way
    return matching_loss(rule, syn_losses, real_losses, weights)


@pytest.mark.parametrize("rule", ["dc", "dcc"])
@pytest.mark.parametrize(("num_classes", "ipc", "dim"), [(1, 1, 3), (3, 2, 4), (4, 1, 2)])
def test_matching_loss_value_and_gradient_match_reference(
    rule: str, num_classes: int, ipc: int, dim: int
) -> None:
    rng = np.random.default_rng(num_classes * 10 + ipc)
    net = TinyNet(d=dim, h=5, c=num_classes + 1, seed=ipc)
    syn_np = rng.normal(size=(num_classes * ipc, dim))
    real = [rng.normal(loc=c, size=(6, dim)) for c in range(num_classes)]

    def reference(flat: np.ndarray) -> float:
        s = flat.reshape(num_classes * ipc, dim)
        return reference_matching_loss(
            net, rule, [s[c * ipc : (c + 1) * ipc] for c in range(num_classes)], real
        )

    syn = torch.tensor(syn_np, requires_grad=True)
    loss = _torch_loss(net, rule, syn, real, ipc)
    assert loss.item() == pytest.approx(reference(syn_np.ravel()), rel=1e-10, abs=1e-12)

    loss.backward()
    assert syn.grad is not None
    h = 1e-6
    numeric = np.zeros(syn_np.size)
    for j in range(syn_np.size):  # central differences of the reference
        up, down = syn_np.ravel().copy(), syn_np.ravel().copy()
        up[j] += h
        down[j] -= h
        numeric[j] = (reference(up) - reference(down)) / (2 * h)
    np.testing.assert_allclose(syn.grad.numpy().ravel(), numeric, rtol=1e-5, atol=1e-7)


def test_rules_agree_for_one_class_and_differ_for_several() -> None:
    rng = np.random.default_rng(3)
    net = TinyNet(d=3, h=4, c=3, seed=0)
    one = torch.tensor(rng.normal(size=(2, 3)))
    real1 = [rng.normal(size=(5, 3))]
    assert _torch_loss(net, "dc", one, real1, 2).item() == pytest.approx(
        _torch_loss(net, "dcc", one, real1, 2).item()
    )
    two = torch.tensor(rng.normal(size=(4, 3)))
    real2 = [rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 1]
    assert _torch_loss(net, "dc", two, real2, 2).item() != pytest.approx(
        _torch_loss(net, "dcc", two, real2, 2).item()
    )


def test_real_side_is_constant() -> None:
    """Only the synthetic side is differentiated: the real samples get no gradient."""
    net = TinyNet(d=2, h=3, c=2, seed=1)
    params = net.torch_params()
    xs = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    xr = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    ls = [F.cross_entropy(TinyNet.forward(params, xs), torch.tensor([0, 0]))]
    lr = [F.cross_entropy(TinyNet.forward(params, xr), torch.tensor([0, 0, 0, 0]))]
    matching_loss("dcc", ls, lr, [params[0], params[2]]).backward()
    assert xs.grad is not None and xs.grad.abs().sum() > 0
    assert xr.grad is None


def test_matching_loss_errors() -> None:
    x = torch.zeros((), requires_grad=True)
    with pytest.raises(ValueError, match="unknown matching rule 'cc'"):
        matching_loss("cc", [x], [x], [x])
    with pytest.raises(ValueError, match="2 synthetic class losses but 1"):
        matching_loss("dc", [x, x], [x], [x])
    with pytest.raises(ValueError, match="no class to match"):
        matching_loss("dcc", [], [], [x])


def test_matched_parameters_skip_one_dimensional_and_prefixed() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 2))
    named = list(net.named_parameters())
    assert [p.shape for p in matched_parameters(named)] == [(2, 1, 3, 3), (2, 2)]
    assert [p.shape for p in matched_parameters(named, skip_prefixes=("2.",))] == [(2, 1, 3, 3)]


# --- DCC's bi-level warm-up ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("iteration", "step", "expected"),
    [
        (0, 0, "dc"),  # inside both warm-ups
        (249, 9, "dc"),  # the last warm-up update
        (249, 10, "dcc"),  # inner warm-up over: contrastive from step T_w on, even early
        (250, 0, "dcc"),  # outer warm-up over: contrastive from the first step
        (999, 3, "dcc"),
    ],
)
def test_bilevel_warmup_schedule(iteration: int, step: int, expected: str) -> None:
    assert matching_rule("dcc", iteration, step, warmup_iterations=250, warmup_steps=10) == expected
    assert matching_rule("dc", iteration, step, warmup_iterations=250, warmup_steps=10) == "dc"


def test_warmup_schedule_table_and_no_warmup() -> None:
    table = [[matching_rule("dcc", k, t, 2, 1) for t in range(3)] for k in range(4)]
    assert table == [["dc", "dcc", "dcc"], ["dc", "dcc", "dcc"], ["dcc"] * 3, ["dcc"] * 3]
    assert {matching_rule("dcc", k, t, 0, 5) for k in range(3) for t in range(3)} == {"dcc"}
    assert {matching_rule("dcc", k, t, 5, 0) for k in range(3) for t in range(3)} == {"dcc"}
    with pytest.raises(ValueError, match=">= 0"):
        matching_rule("dcc", -1, 0, 1, 1)
    with pytest.raises(ValueError, match="unknown matching rule"):
        matching_rule("dsa", 0, 0, 1, 1)
