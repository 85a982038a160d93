"""The two steps every figure of ours shares: matplotlib without a display, and a PNG written where asked."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display needed: CI, servers), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = 100) -> Path:
    """Lay out `figure`, write it to `path` (parent folders created; written whole or not at all, so two processes
    that redraw one figure never leave a broken one) and free it; returns the path."""
    from .files import write_atomically

    path = Path(path)
    figure.tight_layout()
    try:
        write_atomically(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png"),
                         "figure")
    finally:
        pyplot().close(figure)
    return path
