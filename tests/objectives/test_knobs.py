"""The config sections are the objectives' knobs: same keys, same defaults, and they take effect."""

from __future__ import annotations

from pixcon.config import load_config
from pixcon.models import create_segmenter
from pixcon.objectives import DataInfo, create_objective

INFO = DataInfo(num_classes=3, ignore_index=255, in_channels=3)


def test_config_values_reach_the_objective() -> None:
    """The config section is the factory's only source of settings (it has no defaults of its own)."""
    cfg = load_config(
        overrides=[
            "ariel.steps=2",
            "ariel.epsilon=0.01",
            "ariel.max_pixels=512",
            "hcsc.num_prototypes=[8,2]",
            "hcsc.temperature=0.3",
            "claws.attention=feature_norm",
            "claws.attend_fraction=0.25",
            "claws.jitter=0.1",
        ]
    )
    ariel = create_objective("ariel", cfg, create_segmenter(num_classes=3), INFO)
    assert (ariel.steps, ariel.epsilon, ariel.max_pixels) == (2, 0.01, 512)
    hcsc = create_objective("hcsc", cfg, create_segmenter(num_classes=3), INFO)
    assert tuple(hcsc.loss.bank.num_prototypes) == (8, 2) and hcsc.loss.temperature == 0.3
    claws = create_objective("claws", cfg, create_segmenter(num_classes=3), INFO)
    assert (claws.attention_source, claws.attend_fraction, claws.jitter) == ("feature_norm", 0.25, 0.1)
