"""Training objectives, chosen by name (``train.objective``); importing this registers them all."""

from pixcon.objectives import extra, multidomain, ssl, supervised
from pixcon.objectives.base import (
    OBJECTIVE_CLASSES,
    OBJECTIVES,
    DataInfo,
    Objective,
    create_objective,
    objective_heads,
    register_objective,
)

__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_CLASSES",
    "DataInfo",
    "Objective",
    "create_objective",
    "extra",
    "multidomain",
    "objective_heads",
    "register_objective",
    "ssl",
    "supervised",
]
