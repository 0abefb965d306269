"""timm-style: every registered objective and every recipe, built from its config, takes one step on a
tiny batch from the real data pipeline: a finite loss, and gradients exactly where it says it trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from pixcon.config import RunConfig, load_config
from pixcon.models import segmenter_from_config
from pixcon.objectives import OBJECTIVES, DataInfo, create_objectives
from pixcon.recipes import RECIPES
from pixcon.train.build import freeze_unused
from pixcon.train.data import build_datasets, objective_dataset
from pixcon.train.recipes import run_recipe
from pixcon.train.trainee import Trainee

SMALL = [
    "model.encoder=tu-test_resnet",
    "model.proj_dim=8",
    "data.image_size=64",
    "data.batch_size=2",
    "loss.max_pixels=64",
    "ssl.max_pairs=32",
    "hcsc.bank_size=64",
    "hcsc.bank_per_step=32",
    "hcsc.num_prototypes=[4, 2]",
    "hcsc.max_pixels=64",
    "claws.max_pixels=64",
    "ariel.max_pixels=64",
    "ariel.steps=1",
]


def _cfg(root: Path, *more: str) -> RunConfig:
    return load_config(overrides=[f"data.root={root}", *SMALL, *more])


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_one_step_of_every_objective(name: str, tiny_dataset64: Path) -> None:
    cfg = _cfg(tiny_dataset64, f"train.objective={name}")
    data = build_datasets(cfg)
    torch.manual_seed(0)
    model = segmenter_from_config(cfg.model, data.num_classes, data.in_channels).train()
    objective = create_objectives(
        name, cfg, model, [DataInfo(data.num_classes, data.ignore_index, 3)], ["tiny"]
    )
    freeze_unused(model, objective)
    batch = next(iter(DataLoader(objective_dataset(cfg, data, objective), batch_size=2, shuffle=False)))
    terms = Trainee(model, objective)((batch,))
    assert terms and all(torch.isfinite(v) for v in terms.values()), terms
    sum(terms.values()).backward()
    reached = {
        part: any(p.grad is not None for p in module.parameters())
        for part, module in (("segmentation", model.net.segmentation_head), ("projection", model.projection))
    }
    assert reached == {
        "segmentation": objective.uses_segmentation_head,
        "projection": objective.uses_projection_head,
    }
    first = next(model.net.encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0  # every objective trains the encoder
    own = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
    assert not own, own  # the objective's own parts (GLCNet's MLPs, ...) all learn


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_one_step_of_every_stage_of_every_recipe(name: str, tiny_dataset64: Path, tmp_path: Path) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text("train_000\ntrain_001\ntrain_002\n")
    cfg = _cfg(tiny_dataset64, f"data.labeled_split={split}", "train.progress=false", "model.proj_layers=1")
    last = run_recipe(name, cfg, tmp_path / name, 1, 1, aux_root=tiny_dataset64)
    assert last.is_file()
