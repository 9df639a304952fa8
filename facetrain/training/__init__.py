"""Training: the trainer (setup, fit, save/resume), optimiser and schedule, evaluation during training, logging."""

from facetrain.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {"preflight": ("check_inputs",), "run": ("train",)})
