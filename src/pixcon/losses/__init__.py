"""Contrastive objectives: pure functions in ``contrastive``, modules over dense maps in ``dense``."""

from pixcon.losses.contrastive import (
    FORMS,
    VARIANTS,
    pair_scopes,
    pixel_contrastive_loss,
    pixel_contrastive_loss_dense,
)

__all__ = ["FORMS", "VARIANTS", "pair_scopes", "pixel_contrastive_loss", "pixel_contrastive_loss_dense"]
