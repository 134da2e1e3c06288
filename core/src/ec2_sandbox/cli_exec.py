"""``ec2-sandbox exec``: run a program and pass its output through, byte for byte.

The program's stdout and stderr go to ours as the transport delivers them (live where it streams: locally
and over SSH). Whatever did not arrive that way - a transport that returns output capped, as SSM does, or
the last bytes of a run cut short - is read from the captured copy on the target in pages, from the first
byte not yet written. Nothing of ec2-sandbox's own is ever written to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import cli
from .errors import InvalidInputError, SandboxError
from .hookspecs import Subparsers
from .sandbox import AsyncSandbox, run_request
from .schema import ExecutionResult, RunRequest

STREAMS = ("stdout", "stderr")
#: Seconds Ctrl-C waits for the output a stopped run wrote but had not yet delivered.
CATCH_UP_SECONDS = 10.0
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "exec",
        help="run a program in the sandbox",
        description=(
            "Run a program in the sandbox. Its stdout and stderr are written to yours byte for byte, "
            "complete however long, live where the transport streams (locally and over SSH; over SSM when "
            "the run ends). ec2-sandbox's own notes go to stderr, prefixed 'ec2-sandbox:'.\n\n"
            "The program's stdin is empty: input piped to this command is not passed on ('-' reads the "
            "program itself from stdin); give it data with --file.\n\n"
            "The run's task hash (for 'ec2-sandbox files') is printed to stderr when stderr is a terminal, "
            "with -v, and whenever the run did not end by itself; --json includes it. Ctrl-C stops the "
            "run and names its task hash; where output is live, all the run wrote has been shown."
        ),
        epilog=cli.EXIT_STATUS_HELP,
    )
    p.add_argument("source", nargs="?", help="file with the program, or '-' to read it from stdin")
    p.add_argument("-c", dest="code", metavar="CODE", help="program text given inline")
    p.add_argument(
        "-r", "--runtime", help="runtime (default: the environment's, python3 where it is allowed)"
    )
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="copy local PATH into the work dir as NAME (default: PATH's file name); repeatable",
    )
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="env var (repeatable)")
    p.add_argument("--session", metavar="ID", help="run in this persistent session's work dir")
    p.add_argument(
        "--stateful",
        action="store_true",
        help="run the Python code as a cell of the session's persistent interpreter (needs --session): "
        "variables stay for the next --stateful call; a final expression's value is printed, as in a REPL",
    )
    p.add_argument(
        "--timeout",
        type=duration,
        metavar="SECONDS",
        help="wall-clock limit: seconds (1.5 is fine) or with a unit: 90s, 2m, 1h; at least 1 s and at "
        "most the environment's max_execution_time (default: that maximum)",
    )
    p.add_argument("--ephemeral", action="store_true", help="delete the work dir when the run ends")
    p.add_argument("--json", action="store_true", help="print the full result as JSON instead")
    p.set_defaults(handler=cmd_exec)


def duration(text: str) -> float:
    """'90', '1.5', '90s', '2m', '1h' -> seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write seconds (90, 1.5) or use a unit (90s, 2m, 1h)"
        )
    return value * DURATION_UNITS[unit]


def program_from(args: argparse.Namespace) -> RunRequest:
    """The run the command line asks for, checked before the sandbox is opened."""
    if args.code is not None and args.source is not None:
        raise InvalidInputError("give the program with -c or as a file, not both")
    if args.code is not None:
        code = args.code
    elif args.source in (None, "-"):
        if args.source is None and sys.stdin.isatty():
            raise InvalidInputError("no program: use -c CODE, a file, or '-' to read stdin")
        code = sys.stdin.read()
    else:
        try:
            code = cli.read_path(args.source).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{args.source} is not UTF-8 text; programs are text") from None
    files = {}
    for item in args.file:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        if not name:
            raise InvalidInputError(f"--file {item!r}: give NAME=PATH, or a PATH that names a file")
        files[name] = cli.read_path(path)
    return run_request(
        code=code,
        runtime=args.runtime,  # None: the environment's default
        session_id=args.session,
        files=files,
        env_vars=env_pairs(args.env),
        create_filesystem=not args.ephemeral,
        timeout=args.timeout,
        stateful=args.stateful,
    )


def env_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--env {item!r} must look like NAME=VALUE")
        out[key] = value
    return out


class ReaderGone(Exception):
    """Stdout's reader went away while output was being written."""


@dataclass
class Relay:
    """Writes the program's output to our stdout and stderr as it arrives, counting it per stream: the
    count is where reading the rest from the target starts."""

    received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    broken: bool = False

    def __call__(self, stream: str, data: bytes) -> None:
        self.received[stream] += len(data)
        if self.broken or not data:
            return
        out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        try:
            out.write(data)
            out.flush()
        except BrokenPipeError:  # our reader went away (`| head`): nothing more is worth writing
            self.broken = True

    def sink(self, stream: str) -> Callable[[bytes], None]:
        """A page writer that stops the paging once the reader is gone."""

        def write(data: bytes) -> None:
            self(stream, data)
            if self.broken:
                raise ReaderGone

        return write

    async def catch_up(self, sandbox: AsyncSandbox, task_hash: str, totals: dict[str, int] | None) -> None:
        """Write what the run produced beyond what arrived, read from its captured output on the target.
        ``totals``: each stream's size when the result says it, else (a stopped run) read to the end."""
        try:
            for stream in STREAMS:
                if self.broken or (totals is not None and self.received[stream] >= totals[stream]):
                    continue
                await sandbox.download_task_file(
                    task_hash, f"@{stream}", self.sink(stream), offset=self.received[stream]
                )
        except ReaderGone:
            pass

    def take_inline(self, result: ExecutionResult) -> None:
        """A stream that arrived whole and valid in the result needs no second trip to the target. U+FFFD
        in the text means bytes were replaced (or the program wrote it): then the copy on the target is
        read instead."""
        for stream in STREAMS:
            text: str = getattr(result, stream)
            data = text.encode("utf-8")
            size = getattr(result, f"{stream}_bytes")
            whole = not getattr(result, f"{stream}_truncated") and len(data) == size
            if self.received[stream] == 0 and data and whole and "\ufffd" not in text:
                self(stream, data)


def exit_status(result: ExecutionResult) -> int:
    if result.termination_reason == "timeout":
        return cli.EXIT_TIMEOUT
    if result.termination_reason != "exited":
        return cli.EXIT_KILLED
    return result.return_code or 0


def files_hint(task_hash: str) -> str:
    return f"task {task_hash}: 'ec2-sandbox files {task_hash}' lists its files"


def cmd_exec(args: argparse.Namespace) -> int:
    program = program_from(args)
    if args.json:
        finished = cli.with_sandbox(args, lambda sandbox: sandbox.execute(program))
        print(finished.model_dump_json(indent=2))
        return exit_status(finished)
    started: list[str] = []
    try:
        result = cli.run_async(_pass_through(args, program, started))
    except KeyboardInterrupt:
        where = f"; {files_hint(started[0])}" if started else ""
        print(f"ec2-sandbox: interrupted, the run was stopped{where}", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    if result is None:  # our reader went away
        return cli.stdout_gone()
    assert result.task_hash is not None  # AsyncSandbox.execute names every run
    if result.termination_reason != "exited":
        print(f"ec2-sandbox: {result.error_message} ({files_hint(result.task_hash)})", file=sys.stderr)
    elif args.verbose or sys.stderr.isatty():
        print(f"ec2-sandbox: {files_hint(result.task_hash)}", file=sys.stderr)
    return exit_status(result)


async def _pass_through(
    args: argparse.Namespace, program: RunRequest, started: list[str]
) -> ExecutionResult | None:
    """Run the program, relaying its output; None when stdout's reader went away (the run is stopped)."""
    main = asyncio.current_task()
    assert main is not None
    relay = Relay()

    def live(stream: str, data: bytes) -> None:
        relay(stream, data)
        if relay.broken and not main.cancelling():  # no one reads the run's output: stop it
            main.cancel()

    async with cli.open_sandbox(args) as sandbox:
        try:
            result = await sandbox.execute(program, on_output=live, on_start=started.append)
        except asyncio.CancelledError:
            if relay.broken:
                main.uncancel()
                return None
            # Ctrl-C: where output was being shown live, its last bytes are shown too, if they can be. (Over
            # a transport that does not stream nothing was shown; the task hash leads to all of it.)
            if started and sandbox.transport.supports_streaming:
                with contextlib.suppress(SandboxError, TimeoutError):
                    await asyncio.wait_for(relay.catch_up(sandbox, started[0], None), CATCH_UP_SECONDS)
            raise
        relay.take_inline(result)
        totals = {stream: getattr(result, f"{stream}_bytes") for stream in STREAMS}
        assert result.task_hash is not None  # AsyncSandbox.execute names every run
        await relay.catch_up(sandbox, result.task_hash, totals)
        if result.stateful:
            show_cell(result)
    return None if relay.broken else result


def show_cell(result: ExecutionResult) -> None:
    """A cell's own part, as a REPL shows it: the value of its last expression, then its traceback."""
    for item in result.results:
        if item.main and item.text is not None:
            print(item.text, flush=True)
    if result.error is not None:
        sys.stderr.write("".join(result.error.traceback))
    if result.state_lost is not None:
        print(f"ec2-sandbox: {result.state_lost.message}", file=sys.stderr)
