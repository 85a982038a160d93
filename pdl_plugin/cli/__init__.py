"""Console entry points: argparse and printing only; the work is library code (`pdl_plugin.recipe`, ...)."""

from __future__ import annotations

import sys

from ..errors import PDLError


def run_cli(main_fn, argv: list[str] | None) -> None:
    """Run a console entry point: our errors print one `error:` line and exit 2, never a traceback."""
    from rich.console import Console
    from rich.markup import escape

    try:
        main_fn(sys.argv[1:] if argv is None else argv)
    except PDLError as err:
        message = " ".join(str(err).split())  # one line, whatever the message's own line breaks
        # soft_wrap: never broken at the terminal's width; escape: a `[...]` in the message is text, not markup
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        raise SystemExit(2) from None
