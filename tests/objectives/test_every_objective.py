"""timm-style: every registered objective and every recipe, built from its config, takes one step on a
tiny batch from the real data pipeline: a finite loss, and gradients exactly where it says it trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from pixcon.models import segmenter_from_config
from pixcon.objectives import OBJECTIVES, DataInfo, create_objectives
from pixcon.recipes import RECIPES
from pixcon.train.build import freeze_unused
from pixcon.train.data import build_datasets, objective_dataset
from pixcon.train.recipes import run_recipe
from pixcon.train.trainee import Trainee


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_one_step_of_every_objective(name: str, tiny_dataset64: Path, small_config) -> None:
    cfg = small_config(tiny_dataset64, f"train.objective={name}")
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
def test_one_step_of_every_stage_of_every_recipe(
    name: str, tiny_dataset64: Path, tmp_path: Path, small_config
) -> None:
    split = tmp_path / "labeled.txt"
    split.write_text("train_000\ntrain_001\ntrain_002\n")
    cfg = small_config(
        tiny_dataset64, f"data.labeled_split={split}", "train.progress=false", "model.proj_layers=1"
    )
    last = run_recipe(name, cfg, tmp_path / name, 1, 1, aux_root=tiny_dataset64)
    assert last.is_file()
