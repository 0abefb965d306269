"""Training objectives, chosen by name (``train.objective``); importing this registers them all."""

from pixcon.objectives import extra, ssl, supervised
from pixcon.objectives.base import OBJECTIVES, DataInfo, Objective, create_objective, register_objective

__all__ = [
    "OBJECTIVES",
    "DataInfo",
    "Objective",
    "create_objective",
    "extra",
    "register_objective",
    "ssl",
    "supervised",
]
