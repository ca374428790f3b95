"""Forward-Forward training on PyTorch, built on an exact and stable softplus family."""

__version__ = "0.1.0"
