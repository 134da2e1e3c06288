"""The ``ec2-sandbox`` command line.

Subcommands live in small modules; each exposes ``register(subparsers)`` and is listed in
:data:`COMMAND_MODULES`. Exit statuses: the program's own for ``exec``; 124 when a run timed out; 125 when
it was killed by a limit or signal or never started; 2 for bad usage or input; 1 for other failures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import SandboxConfig
from .errors import ConfigError, InvalidInputError, SandboxError
from .sandbox import AsyncSandbox, load_config

T = TypeVar("T")
EXIT_TIMEOUT = 124
EXIT_KILLED = 125
EXIT_USAGE = 2

#: Modules that add subcommands; each has ``register(subparsers)``.
COMMAND_MODULES = [
    "ec2_sandbox.cli_run",
    "ec2_sandbox.cli_config",
    "ec2_sandbox.cli_mcp",
    "ec2_sandbox.cli_prepare",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ec2-sandbox",
        description=(
            "Run code safely on your EC2 instance (over SSM or EC2 Instance Connect) or, with no instance "
            "configured, on this machine - the same sandbox AI agents use through the four tools."
        ),
        epilog="Run 'ec2-sandbox COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $EC2_SANDBOX_CONFIG, then ./config.json if present)",
    )
    parser.add_argument(
        "-E",
        "--environment",
        metavar="NAME",
        default=None,
        help="environment in the configuration file, or a preset name (default: 'default')",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args) or 0)
    except InvalidInputError as exc:
        print(f"ec2-sandbox: invalid input: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"ec2-sandbox: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SandboxError as exc:
        print(f"ec2-sandbox: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ec2-sandbox: interrupted", file=sys.stderr)
        return 130


def read_path(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
