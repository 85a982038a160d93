"""The two steps every figure of ours shares: matplotlib without a display, and a PNG written where asked."""

from __future__ import annotations

from pathlib import Path


FIGURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def check_figure_path(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, a figure path whose suffix no figure can be written as, or a machine without
    matplotlib (the `eval` extra): the table or results would be written, then the command die at the plot."""
    from .errors import PDLConfigError
    from .files import check_can_create_file

    path = Path(path)
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in FIGURE_FORMATS:
        raise PDLConfigError(f"{flag} {path}: a figure is written as {', '.join(FIGURE_FORMATS)} (by the file's "
                             f"suffix), not {suffix or 'a file without a suffix'!r}. Name it e.g. {path.stem}.png.")
    pyplot()
    return check_can_create_file(path, flag)


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display needed: CI, servers), imported only when a figure is drawn."""
    try:
        import matplotlib
    except ImportError:
        from .errors import PDLConfigError

        raise PDLConfigError("Drawing figures needs matplotlib, which comes with the `eval` extra: "
                             "pip install 'pdl-plugin[eval]'.") from None

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
