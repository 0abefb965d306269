"""Segmentation models: smp encoder-decoders with a projection head, and their multi-domain form."""

from pixcon.models.heads import ProjectionHead
from pixcon.models.multidomain import export_domain, num_domains, to_multidomain, use_domain
from pixcon.models.segmenter import (
    ARCHITECTURES,
    Segmenter,
    create_segmenter,
    load_encoder_weights,
    segmenter_from_config,
)

__all__ = [
    "ARCHITECTURES",
    "ProjectionHead",
    "Segmenter",
    "create_segmenter",
    "export_domain",
    "load_encoder_weights",
    "num_domains",
    "segmenter_from_config",
    "to_multidomain",
    "use_domain",
]
