"""The objective registry records each objective's class, so its heads can be read without building it."""

from __future__ import annotations

import pytest
from torch import nn

from pixcon.config import RunConfig
from pixcon.models import create_segmenter
from pixcon.objectives import OBJECTIVES, DataInfo, Objective, create_objective, register_objective
from pixcon.objectives.base import OBJECTIVE_CLASSES, objective_heads

INFO = DataInfo(num_classes=3, ignore_index=255, in_channels=3)


class Seg(Objective):  # module level: a factory's return annotation must resolve
    uses_segmentation_head = True


def test_every_objective_has_its_class() -> None:
    assert set(OBJECTIVE_CLASSES) == set(OBJECTIVES)
    for cls in OBJECTIVE_CLASSES.values():
        assert issubclass(cls, Objective) and cls is not Objective


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_heads_match_a_built_objective(name: str) -> None:
    objective = create_objective(name, RunConfig(), create_segmenter(num_classes=3), INFO)
    assert type(objective) is OBJECTIVE_CLASSES[name]
    assert objective_heads(name) == (objective.uses_segmentation_head, objective.uses_projection_head)


def test_known_heads() -> None:
    assert objective_heads("ce") == (True, False)
    assert objective_heads("joint") == (True, True)
    assert objective_heads("contrast") == (False, True)
    assert objective_heads("glcnet") == (False, False)


def test_registration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pixcon.objectives.base.OBJECTIVES", dict(OBJECTIVES))
    monkeypatch.setattr("pixcon.objectives.base.OBJECTIVE_CLASSES", dict(OBJECTIVE_CLASSES))
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        objective_heads("nope")
    with pytest.raises(TypeError, match="subclass of Objective"):
        register_objective("bad", nn.Module)  # type: ignore[arg-type]

    @register_objective("annotated")
    def _annotated(cfg: object, model: nn.Module, info: DataInfo) -> Seg:
        return Seg()

    @register_objective("bare")
    def _bare(cfg: object, model: nn.Module, info: DataInfo) -> Objective:
        return Seg()

    assert objective_heads("annotated") == (True, False)  # from the return annotation
    with pytest.raises(ValueError, match="registered without its class"):
        objective_heads("bare")
    with pytest.raises(ValueError, match="already registered"):
        register_objective("ce", Seg)(_bare)
