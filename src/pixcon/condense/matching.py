"""Gradient matching for dataset condensation: the layer-wise distance and the two matching rules.

Notation (DC: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021;
DCC: Lee, Chun, Jung, Yun & Yoon, "Dataset Condensation with Contrastive Signals", ICML 2022):
``S_c`` is the synthetic set of class c, ``T_c`` a batch of real samples of class c, and
``l_c^S(theta)``, ``l_c^T(theta)`` the mean training loss of the network over them. For a
segmentation network, ``l_c`` is the mean loss over the pixels labelled c (pixcon's extension).

* ``dc`` matches class by class (DC Eq. 8 with the distance of Eq. 9-10)::

      L_DC = sum_c D(grad l_c^S, grad l_c^T)

* ``dcc`` matches the gradient of the loss over all classes together, so the matched gradient
  carries the signals that tell the classes apart (DCC Sec. 3; the official code's ``--contrast``)::

      L_DCC = D(grad (1/C) sum_c l_c^S, grad (1/C) sum_c l_c^T)

  With the same number of synthetic samples in every class, ``(1/C) sum_c l_c^S`` is the mean
  loss over the whole synthetic set.

* DCC's bi-level warm-up (`matching_rule`): the class-wise rule is used while both the outer
  iteration (a freshly initialised network) is below ``warmup_iterations`` and the inner step
  (a synthetic-set update on that network) is below ``warmup_steps``; ``dcc`` everywhere else.

The functions here are pure: the losses come from the caller's forward passes, and the gradients
w.r.t. the network parameters are taken here, with the graph kept for the synthetic side so that
the matching loss can be differentiated w.r.t. the synthetic images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from pixcon.condense.options import RULES, check_rule

MatchingRule = Literal["dc", "dcc"]
DEFAULT_EPS = 1e-6  # the official code's guard in the cosine denominator
__all__ = ["RULES", "MatchingRule", "check_rule", "gradient_distance", "layer_distance", "matching_loss"]


def layer_distance(grad_syn: Tensor, grad_real: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The distance of one layer's gradients, DC Eq. 10.

    ``d(A, B) = sum_i (1 - <A_i, B_i> / (||A_i|| ||B_i|| + eps))`` over the output nodes i: one
    row per output channel of a convolution (its ``in * h * w`` weights flattened), per output of
    a linear layer, per channel of a (C, h, w) layer-norm weight. One-dimensional gradients (biases,
    normalisation scales) contribute 0: the DC papers leave the bias terms out.

    Args:
        grad_syn: Gradient of one parameter from the synthetic data, any shape, e.g. (O, I, h, w).
        grad_real: The same parameter's gradient from the real data, same shape.
        eps: Added to the product of the norms (the official code's 1e-6).

    Returns:
        Scalar, in ``[0, 2 * O]``; differentiable w.r.t. both inputs.
    """
    if grad_syn.shape != grad_real.shape:
        raise ValueError(
            f"gradient shapes differ: synthetic {tuple(grad_syn.shape)}, real {tuple(grad_real.shape)}"
        )
    if grad_syn.dim() <= 1:
        return grad_syn.new_zeros(())
    a = grad_syn.reshape(grad_syn.shape[0], -1)  # (O, F)
    b = grad_real.reshape(grad_real.shape[0], -1)  # (O, F)
    cosine = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)  # (O,)
    return (1.0 - cosine).sum()


def gradient_distance(
    grads_syn: Sequence[Tensor], grads_real: Sequence[Tensor], eps: float = DEFAULT_EPS
) -> Tensor:
    """``D(G^S, G^T) = sum_l d(G^S_l, G^T_l)`` over the layers l, DC Eq. 9 (`layer_distance`).

    Args:
        grads_syn: One gradient per parameter, from the synthetic data.
        grads_real: The same parameters' gradients from the real data, same order and shapes.
        eps: See `layer_distance`.

    Returns:
        Scalar.
    """
    if len(grads_syn) != len(grads_real):
        raise ValueError(f"{len(grads_syn)} synthetic gradients but {len(grads_real)} real ones")
    if not grads_syn:
        raise ValueError("no gradients to match")
    total = grads_syn[0].new_zeros(())
    for g_syn, g_real in zip(grads_syn, grads_real, strict=True):
        total = total + layer_distance(g_syn, g_real, eps)
    return total


def matched_parameters(
    named: Sequence[tuple[str, Tensor]], skip_prefixes: Sequence[str] = ()
) -> list[Tensor]:
    """The parameters whose gradients the distance compares: trainable, more than one dimension
    (the one-dimensional ones contribute 0 to `layer_distance`, so their gradients need not be
    computed at all), and not under any of `skip_prefixes` (modules the loss does not reach)."""
    return [
        p
        for name, p in named
        if p.requires_grad and p.dim() > 1 and not any(name.startswith(s) for s in skip_prefixes)
    ]


def _grads(loss: Tensor, params: Sequence[Tensor], *, create_graph: bool) -> list[Tensor]:
    grads = torch.autograd.grad(loss, list(params), create_graph=create_graph, retain_graph=True)
    return list(grads) if create_graph else [g.detach() for g in grads]


def matching_loss(
    rule: str,
    syn_losses: Sequence[Tensor],
    real_losses: Sequence[Tensor],
    params: Sequence[Tensor],
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """The gradient-matching loss of one synthetic-set update under a matching rule.

    Args:
        rule: ``"dc"`` (class-wise, DC Eq. 8) or ``"dcc"`` (all classes together, DCC); see the
            module docstring.
        syn_losses: ``l_c^S(theta)`` for each matched class c: scalar losses with a graph to the
            synthetic samples (and to `params`).
        real_losses: ``l_c^T(theta)`` for the same classes, same order; their gradients are
            treated as constants.
        params: The network parameters the gradients are taken w.r.t. (see `matched_parameters`).
        eps: See `layer_distance`.

    Returns:
        Scalar matching loss, differentiable w.r.t. whatever `syn_losses` depend on.
    """
    check_rule(rule)
    if len(syn_losses) != len(real_losses):
        raise ValueError(f"{len(syn_losses)} synthetic class losses but {len(real_losses)} real ones")
    if not syn_losses:
        raise ValueError("no class to match: the synthetic set and the real batch share no class")
    if rule == "dcc":
        syn = torch.stack(list(syn_losses)).mean()  # (1/C) sum_c l_c^S
        real = torch.stack(list(real_losses)).mean()  # (1/C) sum_c l_c^T
        return gradient_distance(
            _grads(syn, params, create_graph=True), _grads(real, params, create_graph=False), eps
        )
    total = syn_losses[0].new_zeros(())
    for syn_c, real_c in zip(syn_losses, real_losses, strict=True):
        total = total + gradient_distance(
            _grads(syn_c, params, create_graph=True), _grads(real_c, params, create_graph=False), eps
        )
    return total


def matching_rule(
    method: str, iteration: int, step: int, warmup_iterations: int, warmup_steps: int
) -> MatchingRule:
    """The rule a method uses at one synthetic-set update, with DCC's bi-level warm-up.

    Args:
        method: ``"dc"`` (always class-wise) or ``"dcc"``.
        iteration: Outer iteration k (0-based): the k-th freshly initialised network.
        step: Inner step t (0-based): the t-th synthetic-set update on that network.
        warmup_iterations: Outer warm-up length K_w (the official code's ``outer_warmup``, 250).
        warmup_steps: Inner warm-up length T_w (the official code's ``inner_warmup``, 10).

    Returns:
        ``"dc"`` while ``iteration < K_w`` and ``step < T_w`` (warm-up); else the method's rule.
    """
    check_rule(method)
    if iteration < 0 or step < 0 or warmup_iterations < 0 or warmup_steps < 0:
        raise ValueError(
            f"iteration, step and warm-up lengths must be >= 0, got {iteration}, {step}, "
            f"{warmup_iterations}, {warmup_steps}"
        )
    if method == "dc":
        return "dc"
    return "dc" if iteration < warmup_iterations and step < warmup_steps else "dcc"
