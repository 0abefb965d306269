"""Training objectives, chosen by name (``train.objective``); importing this registers them all."""

from pixcon.objectives import extra, ssl, supervised
from pixcon.objectives.base import (
    OBJECTIVE_CLASSES,
    OBJECTIVES,
    DataInfo,
    Objective,
    create_objective,
    objective_heads,
    register_objective,
)
from pixcon.objectives.domains import DomainObjectives, DomainRegulariser, create_objectives

__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_CLASSES",
    "DataInfo",
    "DomainObjectives",
    "DomainRegulariser",
    "Objective",
    "create_objective",
    "create_objectives",
    "extra",
    "objective_heads",
    "register_objective",
    "ssl",
    "supervised",
]
