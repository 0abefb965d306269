"""Recipes: compute-matched step budgets, checkpoint chaining and per-stage settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixcon.config import RunConfig, load_config
from pixcon.recipes import RECIPES, Recipe, Stage, recipe_steps
from pixcon.train.recipes import run_recipe


def _record(calls: list[RunConfig]):
    def train(cfg: RunConfig) -> None:
        calls.append(cfg)

    return train


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "pseudo"])
def test_every_recipe_spends_the_ce_budget_and_chains_checkpoints(name: str, tmp_path: Path) -> None:
    calls: list[RunConfig] = []
    cfg = load_config(overrides=["data.batch_size=8", "train.seed=3"])
    last = run_recipe(
        name,
        cfg,
        tmp_path,
        pretrain_steps=30,
        finetune_steps=20,
        train=_record(calls),
        aux_root=tmp_path / "aux",
    )
    assert sum(c.train.steps for c in calls) == 50  # the same optimizer steps as CE-only
    assert calls[-1].train.objective == "ce" or name in ("joint", "multidomain", "contrast_joint_ft")
    assert last == Path(calls[-1].train.out_dir) / "last.pt"
    assert calls[0].train.init_from is None
    for prev, cur, stage in zip(calls[:-1], calls[1:], RECIPES[name].stages[1:], strict=True):
        assert cur.train.init_from == (str(Path(prev.train.out_dir) / "last.pt") if stage.init else None)
    for c in calls:
        assert c.data.batch_size == 8  # 5 labeled images fill batches of 8 (each drawn again)
        assert c.train.seed == 3 and c.train.eval_every == c.train.steps


def test_supercon_fine_tunes_with_balanced_weights(tmp_path: Path) -> None:
    calls: list[RunConfig] = []
    run_recipe("supercon", load_config(), tmp_path, 10, 10, train=_record(calls))
    assert [c.loss.class_weights for c in calls] == [None, "balanced"]


@pytest.mark.parametrize("name", [n for n in RECIPES if n not in ("pseudo", "multidomain")])
def test_fine_tuning_stages_start_from_the_prototype_head_at_a_third_of_the_lr(
    name: str, tmp_path: Path
) -> None:
    calls: list[RunConfig] = []
    cfg = load_config(overrides=["optim.lr=0.006", "model.proj_layers=1"])
    run_recipe(name, cfg, tmp_path, 10, 10, train=_record(calls))
    from pixcon.objectives import objective_heads

    # prototype heads exactly where the stage before trained the projection head (the ablation aside)
    for prev, c, stage in zip([None, *RECIPES[name].stages], calls, RECIPES[name].stages, strict=False):
        fine_tune = stage.objective in ("ce", "joint") and stage.init
        imprinted = fine_tune and name != "contrast_random_head" and objective_heads(prev.objective)[1]
        assert c.train.head_init == ("prototypes" if imprinted else "random"), stage.name
        assert c.optim.lr == pytest.approx(0.002 if imprinted else 0.006), stage.name
    assert any(c.train.head_init == "prototypes" for c in calls) == (
        name not in ("ce", "joint", "contrast_random_head", "glcnet", "directclr")
    )


def test_stage_steps_and_errors(tmp_path: Path) -> None:
    halves = [Stage("a", "ce", "pretrain", share=0.5), Stage("b", "ce", "pretrain", share=0.5)]
    assert recipe_steps(halves, 7, 4) == [4, 3]  # the cumulative shares: 7 steps in all
    assert recipe_steps(halves, 15, 4) == [8, 7] and recipe_steps(halves, 40, 4) == [20, 20]
    assert recipe_steps([Stage("a", "ce", "both")], 7, 4) == [11]
    with pytest.raises(ValueError, match="budget"):
        recipe_steps([Stage("a", "ce", "later")], 7, 4)
    with pytest.raises(ValueError, match="unknown method 'nope'.*available"):
        run_recipe("nope", load_config(), tmp_path, 1, 1, train=_record([]))


def test_a_first_stage_cannot_start_from_a_previous_one() -> None:
    # refused when the recipe is written down, so before any training
    for bad in (Stage("a", "ce", init=True), Stage("a", "contrast", pseudo_label=True)):
        with pytest.raises(ValueError, match="stage a needs the previous stage's checkpoint"):
            Recipe("broken", (bad,))


def test_multidomain_trains_with_the_auxiliary_dataset_uncapped(tmp_path: Path) -> None:
    calls: list[RunConfig] = []
    cfg = load_config(overrides=["data.batch_size=8"])
    run_recipe("multidomain", cfg, tmp_path, 30, 20, train=_record(calls), aux_root="/d/aux")
    (c,) = calls
    assert c.train.objective == "ce" and c.train.steps == 50  # per-domain CE, with the regulariser
    assert c.data.batch_size == 8  # the primary domain: its 5 labeled images fill the batches
    assert c.multidomain.domains == [{"name": "aux", "root": "/d/aux", "batch_size": 8}]  # all labeled
    with pytest.raises(ValueError, match="auxiliary domain; pass aux_root"):
        run_recipe("multidomain", cfg, tmp_path, 1, 1, train=_record([]))


def test_the_pseudo_label_round_fine_tunes_from_prototype_heads_too() -> None:
    tuned = [st for st in RECIPES["pseudo"].stages if st.objective == "ce"]
    assert [st.name for st in tuned] == ["finetune", "finetune_pseudo"]
    assert all(st.overrides["train"]["head_init"] == "prototypes" and st.lr_scale == 1 / 3 for st in tuned)


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("budgets", [(15, 15), (5, 3), (40, 40)])
def test_every_recipe_spends_exactly_the_ce_budget(name: str, budgets: tuple[int, int]) -> None:
    assert sum(recipe_steps(RECIPES[name].stages, *budgets)) == sum(budgets)
