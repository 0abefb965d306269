"""Segmentation models: smp encoder-decoders with a projection head."""

from pixcon.models.heads import ProjectionHead
from pixcon.models.segmenter import ARCHITECTURES, Segmenter, create_segmenter, load_encoder_weights

__all__ = ["ARCHITECTURES", "ProjectionHead", "Segmenter", "create_segmenter", "load_encoder_weights"]
