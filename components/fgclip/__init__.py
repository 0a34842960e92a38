"""FG-CLIP pipeline: fine-grained data building, training, evaluation and registry."""

__version__ = "0.1.0"
