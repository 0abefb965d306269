"""Training: one Fabric loop for contrastive pretraining, CE fine-tuning and the baselines."""

from pixcon.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pixcon.train.loop import NonFiniteLossError, evaluate, load_model, run_training

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "evaluate",
    "load_checkpoint",
    "load_model",
    "run_training",
    "save_checkpoint",
]
