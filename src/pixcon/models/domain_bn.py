"""Domain-specific batch normalisation: shared convolutions, one BatchNorm per domain.

Boutillon et al., "Multi-task, multi-domain deep segmentation with shared representations and
contrastive regularization for sparse pediatric datasets" (MICCAI 2021, arXiv 2105.10310), train
one network on several datasets at once: the convolutions are shared, and every batch-norm layer
has *domain-specific parameters that compute the respective dataset statistics*, i.e. per domain
its own running mean/variance **and** its own affine scale and shift (as in Karani et al., MICCAI
2018, whom they follow). That is the default here; ``shared_affine=True`` keeps one (gamma, beta)
for all domains and only splits the statistics (the "domain-specific statistics" ablation).

Batches are single-domain: a :class:`DomainBatchNorm2d` normalises with the copy of its active
domain, which :func:`set_domain` selects for a whole module tree (every :class:`DomainSwitched`
layer in it: these batch norms, and the per-domain segmentation heads of
:mod:`pixcon.models.multidomain`)::

    model = convert_to_domain_bn(create_segmenter(...), num_domains=2)
    with set_domain(model, 1):      # or plainly set_domain(model, 1)
        logits = model(x_of_domain_1)

Only the active copy sees the batch, so the running statistics and the affine gradients of the
other domains are untouched. Each copy is a plain ``nn.BatchNorm2d``, so code that finds norm
layers with ``isinstance(m, _BatchNorm)`` keeps working, and the shared-affine parameters are 1-d
(no weight decay in pixcon's optimiser groups).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from types import TracebackType
from typing import cast

import torch
from torch import Tensor, nn


class DomainSwitched(nn.Module):
    """A layer with one copy per domain, of which the active one runs (see :func:`set_domain`).

    Subclasses set :attr:`num_domains` and :attr:`active` and implement :meth:`plain` and
    :meth:`domain_parameters`.
    """

    num_domains: int
    active: int

    def plain(self, domain: int) -> nn.Module:  # pragma: no cover - abstract
        """The single-domain layer that computes what this one does for ``domain``."""
        raise NotImplementedError

    def domain_parameters(self, domain: int) -> list[nn.Parameter]:  # pragma: no cover - abstract
        """The parameters that belong to ``domain`` only."""
        raise NotImplementedError


class DomainBatchNorm2d(DomainSwitched):
    """``num_domains`` copies of ``nn.BatchNorm2d``; the active one normalises the batch.

    Args:
        num_features: Channels C.
        num_domains: Number of domains (datasets), >= 1.
        eps, momentum, affine, track_running_stats: As in ``nn.BatchNorm2d``.
        shared_affine: ``False`` (Boutillon et al.): every domain has its own statistics and its
            own affine (gamma, beta). ``True``: per-domain statistics, one affine shared by all.

    Attributes:
        bns: The per-domain ``nn.BatchNorm2d`` layers (without affine when ``shared_affine``).
        weight, bias: The shared affine, shape (C,), only with ``shared_affine=True``.
        active: Index of the domain used by :meth:`forward` (set with :func:`set_domain`).
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        shared_affine: bool = False,
    ) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features, self.num_domains = num_features, num_domains
        self.affine, self.shared_affine = affine, bool(shared_affine and affine)
        per_domain_affine = affine and not self.shared_affine
        self.bns = nn.ModuleList(
            nn.BatchNorm2d(
                num_features,
                eps=eps,
                momentum=momentum,
                affine=per_domain_affine,
                track_running_stats=track_running_stats,
            )
            for _ in range(num_domains)
        )
        if self.shared_affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.active = 0

    @classmethod
    def from_batchnorm(
        cls, bn: nn.BatchNorm2d, num_domains: int, shared_affine: bool = False
    ) -> DomainBatchNorm2d:
        """A domain BN whose every copy starts as ``bn``: affine, running stats, counter, mode.

        The result lives on ``bn``'s device and dtype, and its parameters keep ``bn``'s
        ``requires_grad`` (a frozen layer stays frozen).
        """
        out = cls(
            bn.num_features,
            num_domains,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            shared_affine=shared_affine,
        )
        ref = bn.weight if bn.weight is not None else bn.running_mean
        if ref is not None:
            out.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for copy_bn in cast("Iterable[nn.BatchNorm2d]", out.bns):
                if bn.track_running_stats:
                    # both layers track statistics (one flag), so these buffers are tensors, not None
                    cast(Tensor, copy_bn.running_mean).copy_(cast(Tensor, bn.running_mean))
                    cast(Tensor, copy_bn.running_var).copy_(cast(Tensor, bn.running_var))
                    cast(Tensor, copy_bn.num_batches_tracked).copy_(cast(Tensor, bn.num_batches_tracked))
                if copy_bn.affine:
                    copy_bn.weight.copy_(bn.weight)
                    copy_bn.bias.copy_(bn.bias)
                    copy_bn.weight.requires_grad_(bn.weight.requires_grad)
                    copy_bn.bias.requires_grad_(bn.bias.requires_grad)
            if out.weight is not None and out.bias is not None:
                out.weight.copy_(bn.weight)
                out.bias.copy_(bn.bias)
                out.weight.requires_grad_(bn.weight.requires_grad)
                out.bias.requires_grad_(bn.bias.requires_grad)
        out.train(bn.training)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W), normalised with the active domain's copy."""
        y = self.bns[self.active](x)
        if self.weight is not None and self.bias is not None:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y

    def domain_parameters(self, domain: int) -> list[nn.Parameter]:
        """The affine parameters that belong to ``domain`` only (none with ``shared_affine``)."""
        check_domain(domain, self.num_domains)
        return list(self.bns[domain].parameters())

    def plain(self, domain: int) -> nn.BatchNorm2d:
        """``domain``'s ``nn.BatchNorm2d`` (the shared affine folded in)."""
        return _to_plain(self, domain)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_domains={self.num_domains}, shared_affine={self.shared_affine}, "
            f"active={self.active}"
        )


def check_domain(domain: int, num_domains: int) -> int:
    """``domain`` as a Python int (numpy and 0-d integer tensors accepted), checked against the range."""
    try:
        index = operator.index(domain)
    except TypeError:
        index = None
    if isinstance(domain, bool) or index is None or not 0 <= index < num_domains:
        raise ValueError(f"domain must be an int in [0, {num_domains}), got {domain!r}")
    return index


def domain_batchnorms(module: nn.Module) -> list[DomainBatchNorm2d]:
    """Every :class:`DomainBatchNorm2d` in ``module``'s tree (``module`` itself included)."""
    return [m for m in module.modules() if isinstance(m, DomainBatchNorm2d)]


def domain_layers(module: nn.Module) -> list[DomainSwitched]:
    """Every :class:`DomainSwitched` layer in ``module``'s tree (``module`` itself included)."""
    return [m for m in module.modules() if isinstance(m, DomainSwitched)]


def num_domains_of(module: nn.Module) -> int:
    """The number of domains of the tree's domain layers.

    Raises:
        ValueError: the tree has no :class:`DomainSwitched` layer, or they disagree.
    """
    counts = {m.num_domains for m in domain_layers(module)}
    if not counts:
        raise ValueError(f"{type(module).__name__} has no DomainBatchNorm2d (convert_to_domain_bn first)")
    if len(counts) > 1:
        raise ValueError(f"the domain layers disagree on num_domains: {sorted(counts)}")
    return counts.pop()


def convert_to_domain_bn(module: nn.Module, num_domains: int, shared_affine: bool = False) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module``'s tree by a :class:`DomainBatchNorm2d`.

    Every domain copy starts with the original layer's affine, running statistics and counter, so
    the converted network computes what the original did whichever domain is active. Other norm
    layers (GroupNorm in smp's FPN, LayerNorm) have no batch statistics and stay shared. Layers
    that already are :class:`DomainBatchNorm2d` are kept (converting twice changes nothing).

    Convert *after* loading a plain checkpoint: the state-dict keys change from ``...bn1.weight``
    to ``...bn1.bns.<d>.weight`` (``...bn1.weight`` with ``shared_affine``).

    Args:
        module: Any module; changed in place. May itself be a ``BatchNorm2d``.
        num_domains: Domains, >= 1.
        shared_affine: See :class:`DomainBatchNorm2d`; ``False`` follows the paper.

    Returns:
        The converted module: ``module`` itself, or a new :class:`DomainBatchNorm2d` when
        ``module`` is a ``BatchNorm2d`` (as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does).

    Raises:
        ValueError: ``num_domains < 1``, or the tree already holds domain BNs with another count.
    """
    if num_domains < 1:
        raise ValueError(f"num_domains must be >= 1, got {num_domains}")
    if isinstance(module, DomainBatchNorm2d):
        if module.num_domains != num_domains:
            raise ValueError(
                f"already converted with num_domains={module.num_domains}, asked for {num_domains}"
            )
        return module
    if isinstance(module, nn.BatchNorm2d):
        return DomainBatchNorm2d.from_batchnorm(module, num_domains, shared_affine=shared_affine)
    for name, child in module.named_children():
        converted = convert_to_domain_bn(child, num_domains, shared_affine=shared_affine)
        if converted is not child:
            setattr(module, name, converted)
    return module


def plain_copy(module: nn.Module, domain: int) -> nn.Module:
    """A deep copy of ``module`` with every :class:`DomainSwitched` layer turned back into the plain
    layer of ``domain`` (a :class:`DomainBatchNorm2d` into its ``nn.BatchNorm2d``, shared affine
    folded in): a single-domain network for export, or as the reference in tests. ``module`` itself
    is unchanged."""
    out = copy.deepcopy(module)
    if isinstance(out, DomainSwitched):
        return out.plain(domain)
    targets = [
        (parent, name, child)
        for parent in out.modules()
        for name, child in parent.named_children()
        if isinstance(child, DomainSwitched)
    ]  # collected first: the tree is not changed while it is walked
    for parent, name, child in targets:
        setattr(parent, name, child.plain(domain))
    return out


def _to_plain(dbn: DomainBatchNorm2d, domain: int) -> nn.BatchNorm2d:
    check_domain(domain, dbn.num_domains)
    src = cast(nn.BatchNorm2d, dbn.bns[domain])
    if not dbn.shared_affine:
        return src
    bn = nn.BatchNorm2d(
        dbn.num_features,
        eps=src.eps,
        momentum=src.momentum,
        affine=True,
        track_running_stats=src.track_running_stats,
    )
    ref = dbn.weight
    assert ref is not None and dbn.bias is not None
    bn.to(device=ref.device, dtype=ref.dtype)
    state = {k: v for k, v in src.state_dict().items()}
    state["weight"], state["bias"] = dbn.weight.detach(), dbn.bias.detach()
    bn.load_state_dict(state)
    bn.train(src.training)
    return bn


class set_domain:  # lower case on purpose: a setter that is also a context manager (torch.set_grad_enabled)
    """Select the active domain of every :class:`DomainSwitched` layer in ``module``'s tree.

    Takes effect at once, like ``torch.set_grad_enabled``; used as a context manager it restores
    each layer's previous domain on exit::

        set_domain(model, 0)             # from now on, domain 0
        with set_domain(model, 1):       # domain 1 inside the block, domain 0 again after it
            ...

    Args:
        module: A tree with at least one :class:`DomainSwitched` layer.
        domain: Index in ``[0, num_domains)``.

    Raises:
        ValueError: no domain layer in the tree, or ``domain`` out of range for one of them.
    """

    def __init__(self, module: nn.Module, domain: int) -> None:
        layers = domain_layers(module)
        if not layers:
            raise ValueError(f"{type(module).__name__} has no DomainBatchNorm2d (convert_to_domain_bn first)")
        for m in layers:  # validate everything before changing anything
            index = check_domain(domain, m.num_domains)
        self._previous = [(m, m.active) for m in layers]
        for m in layers:
            m.active = index

    def __enter__(self) -> set_domain:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for m, previous in self._previous:
            m.active = previous
