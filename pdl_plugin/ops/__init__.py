"""Pure tensor kernels, no framework code."""

from .cross_entropy import linear_cross_entropy

__all__ = ["linear_cross_entropy"]
