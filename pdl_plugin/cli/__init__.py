"""Console entry points: argparse and printing only; the work is library code (`pdl_plugin.recipe`, ...)."""

from __future__ import annotations

import sys

from ..errors import PDLError


def run_cli(main_fn, argv: list[str] | None) -> None:
    """Run a console entry point: our errors print one line and exit 2, never a traceback."""
    from rich.console import Console

    try:
        main_fn(sys.argv[1:] if argv is None else argv)
    except PDLError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        raise SystemExit(2) from None
