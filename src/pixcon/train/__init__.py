"""Training: one Fabric loop for contrastive pretraining, CE fine-tuning and the baselines.

:func:`build_run` assembles a run from its config, :func:`fit` steps through it, and
:func:`run_training` does both. Lightning Fabric is used here and nowhere else in the library.
"""

from pixcon.train.loop import NonFiniteLossError, fit, run_training
from pixcon.train.run import Run, build_run

__all__ = ["NonFiniteLossError", "Run", "build_run", "fit", "run_training"]
