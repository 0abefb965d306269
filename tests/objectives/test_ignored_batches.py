"""Every objective takes a batch whose masks hold only the ignore index: finite terms, finite
gradients, and zero for the terms that need labels (issue 18: such a crop gave a NaN CE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pixcon.models import segmenter_from_config
from pixcon.objectives import OBJECTIVES, DataInfo, create_objectives
from pixcon.train.build import freeze_unused
from pixcon.train.data import build_datasets, objective_dataset
from pixcon.train.trainee import Trainee

LABEL_TERMS = {"ce": ["ce"], "joint": ["ce", "contrast"], "contrast": ["contrast"]}


@pytest.fixture(scope="module")
def ignored_dataset(tiny_dataset64: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 64 px tiny dataset with every mask pixel set to 255."""
    import shutil

    root = tmp_path_factory.mktemp("ignored") / "all255"
    shutil.copytree(tiny_dataset64, root)
    for mask in (root / "masks").glob("*.png"):
        Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)).save(mask)
    return root


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_all_ignored_batch_gives_finite_terms(name: str, ignored_dataset: Path, small_config) -> None:
    cfg = small_config(ignored_dataset, f"train.objective={name}")
    data = build_datasets(cfg)
    torch.manual_seed(0)
    model = segmenter_from_config(cfg.model, data.num_classes, data.in_channels).train()
    objective = create_objectives(name, cfg, model, [DataInfo(data.num_classes, data.ignore_index, 3)], ["d"])
    freeze_unused(model, objective)
    batch = next(iter(DataLoader(objective_dataset(cfg, data, objective), batch_size=2, shuffle=False)))
    terms = Trainee(model, objective)((batch,))
    assert terms and all(torch.isfinite(v) for v in terms.values()), terms
    for term in LABEL_TERMS.get(name, []):
        assert terms[term].item() == 0.0, (term, terms)
    sum(terms.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
