"""One segmenter for several datasets (domains), after Boutillon et al. (MICCAI 2021).

Boutillon et al., "Multi-task, multi-domain deep segmentation with shared representations and
contrastive regularization for sparse pediatric datasets" (arXiv 2105.10310), train one network on
the union of datasets that have different images *and* different classes:

* **shared** convolutions (encoder, decoder, projection heads);
* **domain-specific batch norm**: per domain its own statistics and affine
  (:mod:`pixcon.models.domain_bn`);
* **domain-specific segmentation layer**: the last layer, one per dataset with its own classes;
* a contrastive regulariser on shared embeddings of several domains
  (:mod:`pixcon.losses.multidomain`).

:class:`MultiDomainSegmenter` wraps a :class:`~pixcon.models.segmenter.Segmenter` and gives it
those parts. Every call names the domain of its batch (batches are single-domain)::

    model = MultiDomainSegmenter(create_segmenter(num_classes=3), num_classes=[3, 5])
    logits = model(x, domain=1)                        # (B, 5, H, W)
    logits, emb = model.forward_both(x, domain=1)      # + pixel embeddings (B, D, h, w)
    out = model.forward_all(x, domain=1)               # + image embeddings (B, D_img)
    logits, img = model.forward_with_image(x, domain=1)  # logits + image embeddings only
    plain = export_domain(model, 1)                    # a plain Segmenter computing model(x, 1)

Embeddings: ``project`` gives pixcon's pixel embeddings (the shared projection head on the decoder
features, Zhao et al.); ``embed_image`` gives the representation the paper contrasts, one vector
per image from the encoder's coarsest (bottleneck) features: spatial mean -> a shared two-layer
MLP (its widths are pixcon's choice, SimCLR-style) -> L2 normalisation. Both heads are shared across domains, because the regulariser compares
embeddings of different domains in one space; their BN layers, like every other BN, are
per-domain.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch.nn.functional as F
from segmentation_models_pytorch.base.initialization import initialize_head
from torch import Tensor, nn

from pixcon.models.domain_bn import (
    check_domain,
    convert_to_domain_bn,
    domain_batchnorms,
    num_domains_of,
    plain_copy,
    set_domain,
)
from pixcon.models.segmenter import Segmenter


class MultiDomainOutput(NamedTuple):
    """What :meth:`MultiDomainSegmenter.forward_all` returns for one single-domain batch."""

    logits: Tensor  # (B, C_d, H, W), the domain's own classes
    embeddings: Tensor  # (B, D, h, w), L2-normalised pixel embeddings (shared projection head)
    image_embeddings: Tensor | None  # (B, D_img), L2-normalised; None without an image head


class MultiDomainSegmenter(nn.Module):
    """A segmenter with per-domain batch norm and per-domain segmentation heads.

    The wrapped ``segmenter`` is changed in place and owned by this module: its BatchNorm layers
    become :class:`~pixcon.models.domain_bn.DomainBatchNorm2d` (every domain starting from the
    segmenter's current values, so convert a trained network after loading it), and its
    segmentation head is moved into :attr:`heads` (``segmenter.net.segmentation_head`` becomes an
    ``nn.Identity``, so no parameter sits unused).

    Args:
        segmenter: The network to share.
        num_classes: Classes of each domain, ``len(num_classes)`` = number of domains.
        shared_affine: BN option (see :class:`~pixcon.models.domain_bn.DomainBatchNorm2d`);
            ``False`` follows the paper.
        image_proj_dim: Output size of the image-level projection head (the paper's contrasted
            representation); ``None`` builds no image head.
        image_proj_hidden: Hidden width of that head; ``None`` = the bottleneck's channel count.

    Attributes:
        segmenter: The shared network (encoder, decoder, pixel projection head).
        heads: One segmentation head per domain: the segmenter's head architecture (conv,
            upsampling) with ``num_classes[d]`` outputs. Domain 0 keeps the segmenter's own head
            (its trained weights) when its class count matches; the others start fresh.
        image_projection: The shared image-level MLP, or ``None``.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        num_classes: Sequence[int],
        shared_affine: bool = False,
        image_proj_dim: int | None = 128,
        image_proj_hidden: int | None = None,
    ) -> None:
        super().__init__()
        num_classes = [int(c) for c in num_classes]
        if not num_classes:
            raise ValueError("num_classes needs one entry per domain, got none")
        if any(c < 1 for c in num_classes):
            raise ValueError(f"every domain needs >= 1 class, got num_classes={num_classes}")
        if image_proj_dim is not None and image_proj_dim < 1:
            raise ValueError(f"image_proj_dim must be >= 1 or None, got {image_proj_dim}")
        self.num_domains = len(num_classes)
        self.num_classes: tuple[int, ...] = tuple(num_classes)
        self.segmenter = convert_to_domain_bn(segmenter, self.num_domains, shared_affine=shared_affine)
        assert isinstance(self.segmenter, Segmenter)
        # smp's SegmentationHead: Sequential(conv, upsampling, activation).
        original = segmenter.net.segmentation_head
        conv = original[0]
        heads = []
        for d, c in enumerate(num_classes):
            if d == 0 and c == segmenter.num_classes:
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
        self.heads = nn.ModuleList(heads)
        segmenter.net.segmentation_head = nn.Identity()
        bottleneck = int(segmenter.net.encoder.out_channels[-1])
        self.image_projection: nn.Sequential | None = None
        if image_proj_dim is not None:
            hidden = image_proj_hidden or bottleneck
            self.image_projection = nn.Sequential(
                nn.Linear(bottleneck, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, image_proj_dim)
            ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        num_domains_of(self.segmenter)  # every BN converted with the same count

    # ------------------------------------------------------------------ properties
    @property
    def in_channels(self) -> int:
        return self.segmenter.in_channels

    @property
    def stride(self) -> int:
        return self.segmenter.stride

    # ------------------------------------------------------------------ forward paths
    def _check(self, domain: int) -> int:
        return check_domain(domain, self.num_domains)

    def _decode(self, x: Tensor, want_bottleneck: bool) -> tuple[Tensor, tuple[int, int], Tensor | None]:
        """The segmenter's own decode path; optionally the coarsest encoder map of the same pass."""
        if not want_bottleneck:
            decoded, size = self.segmenter._decode(x)
            return decoded, size, None
        # The segmenter's own normalise-and-pad (one code path), and no hook (torch.compile'd
        # encoders would recompile for every new hook).
        features, size = self.segmenter._encode(x)
        return self.segmenter.net.decoder(features), size, features[-1]

    def _image_embed(self, bottleneck: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, C_enc, h', w') of the padded input -> (B, D_img), unit norm."""
        assert self.image_projection is not None
        padded_h = size[0] + (-size[0]) % self.stride
        scale = padded_h / bottleneck.shape[-2]  # input pixels per bottleneck cell (32 or 16)
        h, w = math.ceil(size[0] / scale), math.ceil(size[1] / scale)
        pooled = bottleneck[..., :h, :w].mean(dim=(-2, -1))  # (B, C_enc): padding left out
        return F.normalize(self.image_projection(pooled), dim=1)  # (B, D_img)

    def forward(self, x: Tensor, domain: int) -> Tensor:
        """x (B, C_in, H, W) of one domain -> that domain's logits (B, C_d, H, W)."""
        d = self._check(domain)
        with set_domain(self.segmenter, d):
            decoded, (h, w), _ = self._decode(x, want_bottleneck=False)
            return self.heads[d](decoded)[..., :h, :w]

    def project(self, x: Tensor, domain: int) -> Tensor:
        """x (B, C_in, H, W) -> L2-normalised pixel embeddings (B, D, h, w), shared head."""
        d = self._check(domain)
        with set_domain(self.segmenter, d):
            decoded, size, _ = self._decode(x, want_bottleneck=False)
            return self.segmenter._project(decoded, size)

    def forward_both(self, x: Tensor, domain: int) -> tuple[Tensor, Tensor]:
        """One pass: logits (B, C_d, H, W) and pixel embeddings (B, D, h, w)."""
        d = self._check(domain)
        with set_domain(self.segmenter, d):
            decoded, (h, w), _ = self._decode(x, want_bottleneck=False)
            return self.heads[d](decoded)[..., :h, :w], self.segmenter._project(decoded, (h, w))

    def embed_image(self, x: Tensor, domain: int) -> Tensor:
        """x (B, C_in, H, W) -> image embeddings (B, D_img): the paper's contrasted representation.

        Runs encoder and decoder (the decoder output is discarded); use :meth:`forward_all` to get
        the logits from the same pass.

        Raises:
            ValueError: the model was built with ``image_proj_dim=None``.
        """
        if self.image_projection is None:
            raise ValueError("this MultiDomainSegmenter has no image head (image_proj_dim=None)")
        image = self.forward_all(x, domain).image_embeddings
        assert image is not None
        return image

    def forward_with_image(self, x: Tensor, domain: int) -> tuple[Tensor, Tensor]:
        """One pass: logits (B, C_d, H, W) and image embeddings (B, D_img), without the pixel
        projection head (the image-level regulariser does not use it; under DDP an unused head
        computed anyway would stall the gradient reduction)."""
        if self.image_projection is None:
            raise ValueError("this MultiDomainSegmenter has no image head (image_proj_dim=None)")
        d = self._check(domain)
        with set_domain(self.segmenter, d):
            decoded, (h, w), bottleneck = self._decode(x, want_bottleneck=True)
            assert bottleneck is not None
            return self.heads[d](decoded)[..., :h, :w], self._image_embed(bottleneck, (h, w))

    def forward_all(self, x: Tensor, domain: int) -> MultiDomainOutput:
        """One pass, every output: logits, pixel embeddings and (with an image head) image embeddings."""
        d = self._check(domain)
        want = self.image_projection is not None
        with set_domain(self.segmenter, d):
            decoded, (h, w), bottleneck = self._decode(x, want_bottleneck=want)
            logits = self.heads[d](decoded)[..., :h, :w]  # (B, C_d, H, W)
            embeddings = self.segmenter._project(decoded, (h, w))  # (B, D, h, w)
            image = self._image_embed(bottleneck, (h, w)) if bottleneck is not None else None
        return MultiDomainOutput(logits, embeddings, image)

    # ------------------------------------------------------------------ parameters
    def domain_parameters(self, domain: int) -> list[nn.Parameter]:
        """Parameters only ``domain`` uses: its BN copies' affine and its segmentation head."""
        d = self._check(domain)
        params: list[nn.Parameter] = []
        for m in domain_batchnorms(self.segmenter):
            params += m.domain_parameters(d)
        return params + list(self.heads[d].parameters())

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter that no single domain owns (convolutions, projection heads, shared affine)."""
        owned = {id(p) for d in range(self.num_domains) for p in self.domain_parameters(d)}
        return [p for p in self.parameters() if id(p) not in owned]

    def reset_classifier(self, domain: int | None = None) -> None:
        """Re-initialise one domain's segmentation head, or all of them (``None``)."""
        domains = range(self.num_domains) if domain is None else [self._check(domain)]
        for d in domains:
            for m in self.heads[d].modules():
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()

    def extra_repr(self) -> str:
        return f"num_domains={self.num_domains}, num_classes={list(self.num_classes)}"


def export_domain(model: MultiDomainSegmenter, domain: int) -> Segmenter:
    """A plain :class:`~pixcon.models.segmenter.Segmenter` that computes ``model(x, domain)``.

    A deep copy: every domain BN becomes ``domain``'s ``nn.BatchNorm2d`` (shared affine folded
    in, :func:`~pixcon.models.domain_bn.plain_copy`), and the segmentation head is ``domain``'s
    own. The pixel projection head comes along (``project`` works); the image head does not.
    ``model`` is unchanged. This is how evaluation, prediction, diagnostics and
    ``--init-from`` into a single-domain run use one domain of a multi-domain checkpoint.
    """
    d = check_domain(domain, model.num_domains)
    plain = plain_copy(model.segmenter, d)
    assert isinstance(plain, Segmenter)
    plain.net.segmentation_head = copy.deepcopy(model.heads[d])
    plain.num_classes = model.num_classes[d]
    plain.train(model.training)
    return plain
