"""The command line (docs/architecture.md §6, rule 12).

Thin: each command parses, calls one function, renders a table or
``--json``. Errors are reported in one place (``main``): ``keyd: <message>``
and the error's exit code; a traceback only with ``--debug``.

Commands live in modules by area; each exposes ``register(group)``:
``keys`` (inspect, jwt, mint), ``db``, ``inventory`` (scan, status),
``probe``, ``rotation`` (rotate, rotations), ``alerts``, ``daemon`` (run, check, config
check).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from keyd import __version__
from keyd.cli import alerts, daemon, db, inventory, keys, probe, rotation
from keyd.cli.common import AppContext
from keyd.errors import EXIT_CONFIG, EXIT_INTERNAL, EXIT_UNKNOWN, KeydError, internal_error_text
from keyd.log import setup_logging
from keyd.report.render import line

EXIT_CODES_HELP = """\b
Exit codes:
  0  ok
  1  warning (keyd check: a key needs attention soon)
  2  critical, or invalid key file / input
  3  unknown (keyd check: state could not be determined)
  4  configuration or usage error
  5  the issuer rejected the key
  6  a dependency (issuer, Vault, database, SMTP) is unavailable: retry later
  7  the issuer answered something unusable
  8  internal error (run with --debug); keyd check says 3 instead

keyd check answers every failure of its own, usage errors included, with
3 (UNKNOWN), as monitoring systems expect.
"""


@click.group(
    help="keyd keeps ZITADEL service-user keys alive.\n\n" + EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config",
    "config_path",
    envvar="KEYD_CONFIG",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file [default: /etc/keyd/keyd.toml; env KEYD_CONFIG].",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Log at the configured level (INFO by default); without it commands other "
    "than `run` log warnings and errors only.",
)
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks on errors.")
@click.version_option(__version__, prog_name="keyd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool, debug: bool) -> None:
    ctx.obj = AppContext(config_path=config_path, debug=debug, verbose=verbose)
    # Until a command loads the config (which may ask for JSON logs), log
    # warnings in the text format; --debug shows everything.
    setup_logging("text", "DEBUG" if debug else "WARNING")


for _module in (keys, db, inventory, probe, rotation, alerts, daemon):
    _module.register(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code instead of raising."""
    args = list(argv) if argv is not None else sys.argv[1:]
    debug = "--debug" in args
    check = _command_of(args) == "check"  # Nagios plugin: every failure of its own is UNKNOWN
    try:
        result = cli.main(args=args, prog_name="keyd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("keyd: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return _unknown(exc.format_message()) if check else EXIT_CONFIG
    except KeydError as exc:
        if debug:
            logging.getLogger("keyd").exception("error")
        click.echo(line(f"keyd: {exc}"), err=True)
        return _unknown(str(exc)) if check else exc.exit_code
    except Exception as exc:  # a bug or an unforeseen fault: one line, never a traceback
        logging.getLogger("keyd").debug("internal error", exc_info=True)
        click.echo(line(f"keyd: {internal_error_text(exc)}"), err=True)
        return _unknown(internal_error_text(exc)) if check else EXIT_INTERNAL
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    return int(result) if isinstance(result, int) else 0


def _unknown(why: str) -> int:
    """``keyd check`` failed before its verdict: the Nagios line, exit 3."""
    click.echo(line(f"KEYD UNKNOWN - {why}"))
    return EXIT_UNKNOWN


def _command_of(args: Sequence[str]) -> str | None:
    """The command word in ``args`` (after the group's own options)."""
    rest = iter(args)
    for arg in rest:
        if arg == "--config":
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


if __name__ == "__main__":
    sys.exit(main())
