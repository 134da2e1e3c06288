"""The ``ec2-sandbox`` command line.

Subcommands live in small modules; each exposes ``register(subparsers)`` and is listed in
:data:`COMMAND_MODULES`, which the built-ins' ``register_commands`` hook adds - the hook through which
plugins add theirs (``ec2-sandbox mcp`` comes with ec2-sandbox-mcp that way). Every failure of the tool
itself ends here as one line on stderr and
:data:`EXIT_FAILED`, a status chosen (as GNU ``timeout`` and ``env`` do) so that a program run by ``exec``
does not produce it by accident.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from .config import SandboxConfig
from .errors import ConfigError, InvalidInputError, SandboxError, TaskNotFoundError
from .hookspecs import Subparsers
from .plugin_commands import add_commands
from .plugins import Registry, get_registry
from .sandbox import AsyncSandbox, load_config

T = TypeVar("T")
log = logging.getLogger(__name__)

EXIT_TIMEOUT = 124
EXIT_FAILED = 125
EXIT_KILLED = 126
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: what a shell reports for a tool whose reader went away (`... | head`).
EXIT_BROKEN_PIPE = 141

EXIT_STATUS_HELP = f"""\
exit status:
  {EXIT_TIMEOUT}  exec: the program timed out
  {EXIT_FAILED}  ec2-sandbox itself failed (usage, input, configuration, credentials,
       target unreachable); one line on stderr names the cause and the fix
  {EXIT_KILLED}  exec: a limit or signal killed the program, or it never started
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_BROKEN_PIPE}  the reader of stdout went away (as in '| head')
  exec exits with the program's own status otherwise"""

#: The core's modules that add subcommands; each has ``register(subparsers)``.
COMMAND_MODULES = [
    "ec2_sandbox.cli_exec",
    "ec2_sandbox.cli_run",
    "ec2_sandbox.cli_config",
    "ec2_sandbox.cli_prepare",
]
#: Commands first-party distributions add, named in the error when one is used but not installed.
PLUGIN_COMMANDS = {"mcp": "ec2-sandbox-mcp"}


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description or epilog; an indented paragraph stays as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if paragraph.startswith("  ") or "\n  " in paragraph:
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


class Parser(argparse.ArgumentParser):
    """The parser of every command and subcommand (argparse creates subparsers of the parent's class).

    Usage errors exit with :data:`EXIT_FAILED`, and the global options are accepted after any command as
    well as before it (``ec2-sandbox exec --config f.json ...``): a subcommand's copy defaults to SUPPRESS,
    so it only sets what was given there.
    """

    def __init__(self, *args: Any, top_level: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        group = self.add_argument_group("global options") if not top_level else self
        unset = None if top_level else argparse.SUPPRESS
        group.add_argument(
            "--config",
            metavar="FILE",
            default=unset,
            help="configuration file (default: $EC2_SANDBOX_CONFIG, then ./config.json if present)",
        )
        group.add_argument(
            "-E",
            "--environment",
            metavar="NAME",
            default=unset,
            help="environment in the configuration file, or a preset name (default: 'default')",
        )
        group.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=0 if top_level else argparse.SUPPRESS,
            help="log progress and name each run's task hash (-vv: debug, with tracebacks)",
        )

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        for command, dist in PLUGIN_COMMANDS.items():
            if f"invalid choice: {command!r}" in message:
                message += f"; the {command!r} command comes with {dist}: pip install {dist}"
        self.exit(EXIT_FAILED, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser(registry: Registry | None = None) -> argparse.ArgumentParser:
    """The whole command line: the core's commands and every plugin's (``registry``: the process's)."""
    parser = Parser(
        prog="ec2-sandbox",
        top_level=True,
        description=(
            "Run code safely on your EC2 instance (over SSM, EC2 Instance Connect or plain SSH) or, with no "
            "instance configured, on this machine - the same sandbox AI agents use through the four tools."
        ),
        epilog=f"Run 'ec2-sandbox COMMAND --help' for a command's options.\n\n{EXIT_STATUS_HELP}",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(registry or get_registry(), sub)
    return parser


def add_core_commands(subparsers: Subparsers) -> None:
    """The core's own commands; the built-ins' ``register_commands`` calls this."""
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)


def environment_name(args: argparse.Namespace) -> str:
    """The environment -E names, else 'default'."""
    return args.environment or "default"


def environment_config(args: argparse.Namespace, **overrides: Any) -> SandboxConfig:
    """The configuration the global options (--config, -E) describe; ``overrides`` win over every layer."""
    return load_config(args.config, environment_name(args), **overrides)


def open_sandbox(args: argparse.Namespace) -> AsyncSandbox:
    """The sandbox the global options describe."""
    return AsyncSandbox(environment_config(args))


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine for a command; Ctrl-C cancels it (so transports can cancel remote work)."""
    return asyncio.run(coro)


def with_sandbox(args: argparse.Namespace, action: Callable[[AsyncSandbox], Awaitable[T]]) -> T:
    """Open the sandbox the global options describe, run one action on it, close it."""

    async def go() -> T:
        async with open_sandbox(args) as sandbox:
            return await action(sandbox)

    return run_async(go())


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def failure_message(exc: BaseException) -> str:
    """One line naming what went wrong and what to do about it."""
    if isinstance(exc, InvalidInputError):
        return f"invalid input: {exc}"
    if isinstance(exc, ConfigError):
        return f"configuration error: {exc}"
    if isinstance(exc, TaskNotFoundError):
        return f"{exc} ('ec2-sandbox files TASK_HASH' lists what a task has)"
    boto = sys.modules.get("botocore.exceptions")  # only loaded when an AWS transport was used
    if boto is not None:
        if isinstance(exc, boto.NoRegionError):
            return (
                "no AWS region is configured: set 'region' in the configuration file, AWS_REGION, or a "
                "region in your AWS profile ('ec2-sandbox config show' shows what is set)"
            )
        if isinstance(exc, boto.NoCredentialsError):
            return "no AWS credentials found: 'ec2-sandbox config auth' shows where they are looked for"
        if isinstance(exc, boto.BotoCoreError | boto.ClientError):
            return f"AWS: {exc} ('ec2-sandbox config auth --check' tests the credentials)"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, SandboxError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc} (run with -vv for the traceback, and report it)"


def stdout_gone() -> int:
    """The reader of stdout went away: stop quietly, as Unix tools do. Python would complain again when it
    flushes stdout at exit, so stdout becomes /dev/null first."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        status = int(args.handler(args) or 0)
        sys.stdout.flush()  # a reader that left is noticed here, not by the interpreter at exit
        return status
    except BrokenPipeError:
        return stdout_gone()
    except KeyboardInterrupt:
        print("ec2-sandbox: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        log.debug("ec2-sandbox failed", exc_info=True)
        print(f"ec2-sandbox: {failure_message(exc)}", file=sys.stderr)
        return EXIT_FAILED


def read_path(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
