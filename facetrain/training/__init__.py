"""Training: the trainer (setup, fit, save/resume), optimiser and schedule, evaluation during training, logging."""

from facetrain.training.run import train

__all__ = ["train"]
