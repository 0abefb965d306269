"""One segmenter for several datasets (domains), after Boutillon et al. (MICCAI 2021).

Boutillon et al., "Multi-task, multi-domain deep segmentation with shared representations and
contrastive regularization for sparse pediatric datasets" (arXiv 2105.10310), train one network on
the union of datasets that have different images *and* different classes:

* **shared** convolutions (encoder, decoder, projection head);
* **domain-specific batch norm**: per domain its own statistics and affine
  (:mod:`pixcon.models.domain_bn`);
* **domain-specific segmentation layer**: the last layer, one per dataset with its own classes
  (:class:`DomainHeads`);
* a contrastive regulariser on shared embeddings of several domains
  (:mod:`pixcon.losses.multidomain`, as a term of any objective in
  :mod:`pixcon.objectives.domains`).

:func:`to_multidomain` converts a :class:`~pixcon.models.segmenter.Segmenter` in place: its batch
norms and its segmentation head become :class:`~pixcon.models.domain_bn.DomainSwitched` layers,
of which the active domain's copy runs. The network stays a ``Segmenter``: every one of its
methods computes the active domain's outputs, so nothing else needs to know about domains::

    model = to_multidomain(create_segmenter(num_classes=3), num_classes=[3, 5])
    with use_domain(model, 1):
        logits = model(x)                       # (B, 5, H, W): domain 1's BN and head
        logits, emb = model.forward_both(x)     # + pixel embeddings (B, D, h, w)
    plain = export_domain(model, 1)             # a plain Segmenter computing domain 1

A single dataset is a list of one domain: :func:`to_multidomain` then changes nothing and
:func:`use_domain` ``(model, 0)`` is a no-op, so callers need no branch on the number of domains.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import cast

from segmentation_models_pytorch.base.initialization import initialize_head
from torch import Tensor, nn

from pixcon.models.domain_bn import (
    DomainSwitched,
    check_domain,
    convert_to_domain_bn,
    domain_layers,
    num_domains_of,
    plain_copy,
    set_domain,
)
from pixcon.models.segmenter import Segmenter


class DomainHeads(DomainSwitched):
    """One segmentation head per domain; the active domain's head runs.

    Indexing gives the active head's layers, as indexing smp's ``SegmentationHead`` (a
    ``Sequential`` of conv, upsampling, activation) does: ``heads[0]`` is the active domain's
    convolution, so code written for one head works for the active domain's.

    Args:
        heads: One head per domain, each mapping decoder features to that domain's logits.
    """

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("DomainHeads needs one head per domain, got none")
        self.heads = nn.ModuleList(heads)
        self.num_domains = len(heads)
        self.active = 0

    def forward(self, x: Tensor) -> Tensor:
        """Decoder features (B, C_dec, h, w) -> the active domain's logits (B, C_d, H, W)."""
        return self.heads[self.active](x)

    def __getitem__(self, index: int) -> nn.Module:
        return cast(nn.Sequential, self.heads[self.active])[index]  # smp's heads are Sequential

    def plain(self, domain: int) -> nn.Module:
        return self.heads[check_domain(domain, self.num_domains)]

    def domain_parameters(self, domain: int) -> list[nn.Parameter]:
        return list(self.heads[check_domain(domain, self.num_domains)].parameters())

    def extra_repr(self) -> str:
        return f"num_domains={self.num_domains}, active={self.active}"


def to_multidomain(
    segmenter: Segmenter, num_classes: Sequence[int], shared_affine: bool = False
) -> Segmenter:
    """``segmenter`` (changed in place) as a network of ``len(num_classes)`` domains.

    Every ``BatchNorm2d`` becomes a :class:`~pixcon.models.domain_bn.DomainBatchNorm2d` whose
    copies all start from the layer's current values (so convert a trained network *after*
    loading it), and the segmentation head becomes :class:`DomainHeads`: domain 0 keeps the
    segmenter's own head (its trained weights) when its class count matches, the others are new
    heads of the same architecture with ``num_classes[d]`` outputs, initialised as smp does.

    Args:
        segmenter: The network to share, built with ``num_classes[0]`` classes.
        num_classes: Classes of each domain; one entry returns ``segmenter`` unchanged.
        shared_affine: Batch-norm option (see :class:`~pixcon.models.domain_bn.DomainBatchNorm2d`);
            ``False`` follows the paper.

    Raises:
        ValueError: no domain, or a domain without classes.
    """
    counts = [int(c) for c in num_classes]
    if not counts:
        raise ValueError("num_classes needs one entry per domain, got none")
    if any(c < 1 for c in counts):
        raise ValueError(f"every domain needs >= 1 class, got num_classes={counts}")
    if len(counts) == 1:
        return segmenter
    convert_to_domain_bn(segmenter, len(counts), shared_affine=shared_affine)
    original = segmenter.net.segmentation_head  # smp's SegmentationHead: Sequential(conv, upsampling, act)
    conv = original[0]
    heads: list[nn.Module] = []
    for d, c in enumerate(counts):
        if d == 0 and c == conv.out_channels:
            heads.append(original)
            continue
        head = copy.deepcopy(original)
        head[0] = nn.Conv2d(
            conv.in_channels,
            c,
            kernel_size=conv.kernel_size,
            padding=conv.padding,
            bias=conv.bias is not None,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        initialize_head(head)  # smp's own head initialisation
        heads.append(head)
    segmenter.net.segmentation_head = DomainHeads(heads)
    num_domains_of(segmenter)  # every layer converted with the same count
    return segmenter


def num_domains(model: nn.Module) -> int:
    """The number of domains of a network: 1 for a plain segmenter."""
    return num_domains_of(model) if domain_layers(model) else 1


@contextlib.contextmanager
def use_domain(model: nn.Module, domain: int) -> Iterator[None]:
    """Within the block, ``model`` computes ``domain``'s outputs (:func:`set_domain`; for a plain,
    single-domain network ``domain`` must be 0 and nothing changes)."""
    if not domain_layers(model):
        check_domain(domain, 1)
        yield
        return
    with set_domain(model, domain):
        yield


def export_domain(model: Segmenter, domain: int) -> Segmenter:
    """A plain :class:`~pixcon.models.segmenter.Segmenter` (a deep copy) that computes ``domain``'s
    outputs of ``model``: every domain layer replaced by ``domain``'s copy
    (:func:`~pixcon.models.domain_bn.plain_copy`). ``model`` is unchanged. This is how evaluation,
    prediction, diagnostics and ``--init-from`` into a single-domain run use one domain of a
    multi-domain checkpoint."""
    check_domain(domain, num_domains(model))
    plain = plain_copy(model, domain)
    assert isinstance(plain, Segmenter)
    return plain


def domain_parameters(model: nn.Module, domain: int) -> list[nn.Parameter]:
    """Parameters only ``domain`` uses: its batch-norm copies' affine and its segmentation head."""
    return [p for m in domain_layers(model) for p in m.domain_parameters(domain)]


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that no single domain owns (convolutions, projection head, shared affine)."""
    owned = {id(p) for d in range(num_domains(model)) for p in domain_parameters(model, d)}
    return [p for p in model.parameters() if id(p) not in owned]
