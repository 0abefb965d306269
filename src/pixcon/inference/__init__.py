"""Inference: load a trained network from a checkpoint, score it, colour its classes.

Nothing here imports the training code or Lightning: a checkpoint is all it needs.
"""

from pixcon.inference.classes import checkpoint_palette, class_colors, default_palette
from pixcon.inference.evaluate import confusion, evaluate, evaluate_checkpoint
from pixcon.inference.loading import (
    check_matches,
    checkpoint_data,
    domain_index,
    domain_names,
    domain_state,
    export_domain_weights,
    is_multidomain,
    load_model,
    network_from_state,
    open_split,
    resolve_device,
)
from pixcon.inference.prototype import imprint_head

__all__ = [
    "check_matches",
    "checkpoint_data",
    "checkpoint_palette",
    "class_colors",
    "confusion",
    "default_palette",
    "domain_index",
    "domain_names",
    "domain_state",
    "evaluate",
    "evaluate_checkpoint",
    "export_domain_weights",
    "imprint_head",
    "is_multidomain",
    "load_model",
    "network_from_state",
    "open_split",
    "resolve_device",
]
