"""Console entry points: argparse and printing only; the work is library code (`pdl_plugin.recipe`, ...)."""

from __future__ import annotations

import logging
import sys

from ..errors import PDLError

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def missing_trl_host() -> str | None:
    """What of the `[trl]` extra (TRL and the transformers it needs) is missing or too old here, in words; None when
    all is there. Read from the installed package's own requirements, so the pins live in pyproject.toml only."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        requirements = [Requirement(text) for text in metadata.requires("pdl-plugin") or []]
    except metadata.PackageNotFoundError:  # run from a source tree without an install: only ask for TRL itself
        requirements = [Requirement("trl")]
    wanted = [r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": "trl"})
              and not r.marker.evaluate({"extra": ""})] or [Requirement("trl")]
    problems = []
    for requirement in wanted:
        try:
            found = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed (needs {requirement})")
            continue
        if requirement.specifier and not requirement.specifier.contains(found, prereleases=True):
            problems.append(f"{requirement.name} {found} is installed (needs {requirement.name}{requirement.specifier})")
    return "; ".join(problems) or None


def require_trl_host(command: str) -> None:
    """Stop a TRL-host command (pdl-sft, pdl-freq, pdl-eval, pdl-compare) with one clear line, before anything of TRL
    is imported, when the `[trl]` extra is missing: not an ImportError from deep inside the package."""
    problem = missing_trl_host()
    if problem is None:
        return
    stop_with_error(f"{command} runs on TRL, and {problem}. Install the TRL host with `pip install 'pdl-plugin[trl]'`. "
                    "In an Axolotl environment (Axolotl pins its own TRL) train with `axolotl train` and the PDLPlugin, "
                    "and count tables with `axolotl pdl-freq`.")


def stop_with_error(message: str, code: int = 2) -> None:
    """Print `error: MESSAGE` on one line of stderr and exit with status 2 (or `code`: 130 for Ctrl-C): how every
    command of ours fails."""
    from rich.console import Console
    from rich.markup import escape

    message = " ".join(message.split())  # one line, whatever the message's own line breaks
    # soft_wrap: never broken at the terminal's width; escape: a `[...]` in the message is text, not markup
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise SystemExit(code)


def run_cli(main_fn, argv: list[str] | None) -> None:
    """Run a console entry point: our errors print one `error:` line and exit 2, never a traceback.

    So does a write that failed deep inside a library (a full disk or a read-only file system, as an `OSError`,
    safetensors' `SafetensorError` or torch's `RuntimeError`) that no writer of ours wrapped: its file, if known,
    and the reason."""
    configure_logging()
    try:
        main_fn(sys.argv[1:] if argv is None else argv)
        return
    except PDLError as err:
        message = str(err)
    except Exception as err:  # only failed writes become one line; the rest is re-raised
        message = _failed_write_message(err)
        if message is None:
            raise
    stop_with_error(message)  # outside the except: the exit carries no chained traceback


def _failed_write_message(err: Exception) -> str | None:
    from ..files import describe_os_error, write_failure

    failure = write_failure(err)
    if failure is None:
        return None
    where = f" {failure.filename}" if getattr(failure, "filename", None) else " a file"
    return (f"Could not write{where}: {describe_os_error(failure)} ({type(err).__name__}). The file being written "
            "may be incomplete.")



def configure_logging() -> None:
    """Give the process's logging one format, `WARNING pdl_plugin.recipe: ...`, as an application's entry point
    does (`logging.basicConfig`, warnings and worse, stderr). Without it our warnings went to Python's last-resort
    handler (bare text) until a library configured the root logger itself (ROUGE's absl calls `basicConfig()` when
    it first logs), and came as `WARNING:pdl_plugin.recipe:...` after that: two looks for one message in one run.
    A root logger configured already (by the caller, or pytest) is left as it is."""
    logging.basicConfig(format=_LOG_FORMAT, level=logging.WARNING)
