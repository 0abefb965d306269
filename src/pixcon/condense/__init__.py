"""Dataset condensation by gradient matching: DC (Zhao, Mopuri & Bilen, ICLR 2021), DSA (Zhao &
Bilen, ICML 2021) and DCC (Lee et al., ICML 2022), for classification as published and for
semantic segmentation (pixcon's own extension; see docs/condense.md).

Modules: :mod:`~pixcon.condense.matching` (the layer-wise gradient distance and the two matching
rules), :mod:`~pixcon.condense.dsa` (differentiable Siamese augmentation),
:mod:`~pixcon.condense.convnet` (the papers' ConvNet), :mod:`~pixcon.condense.classification`,
:mod:`~pixcon.condense.segmentation` and :mod:`~pixcon.condense.cli` (``pixcon condense``).
The public names below are loaded on first use, so importing the CLI does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "RULES": "pixcon.condense.options",
    "DSA_FAMILIES": "pixcon.condense.options",
    "layer_distance": "pixcon.condense.matching",
    "gradient_distance": "pixcon.condense.matching",
    "matched_parameters": "pixcon.condense.matching",
    "matching_loss": "pixcon.condense.matching",
    "matching_rule": "pixcon.condense.matching",
    "DSAConfig": "pixcon.condense.dsa",
    "DSAParams": "pixcon.condense.dsa",
    "apply_dsa": "pixcon.condense.dsa",
    "apply_dsa_mask": "pixcon.condense.dsa",
    "sample_dsa": "pixcon.condense.dsa",
    "siamese_dsa": "pixcon.condense.dsa",
    "ConvNet": "pixcon.condense.convnet",
    "MatchingConfig": "pixcon.condense.common",
    "ClassificationConfig": "pixcon.condense.classification",
    "condense_classification": "pixcon.condense.classification",
    "load_classification_data": "pixcon.condense.classification",
    "train_and_test": "pixcon.condense.classification",
    "SegmentationConfig": "pixcon.condense.segmentation",
    "condense_segmentation": "pixcon.condense.segmentation",
    "load_labeled_set": "pixcon.condense.segmentation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pixcon.condense' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
