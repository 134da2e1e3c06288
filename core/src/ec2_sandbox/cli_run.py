"""Subcommands that use a sandbox: exec, files, cleanup, status, plugins."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable
from contextlib import nullcontext

from . import cli
from .errors import InvalidInputError
from .plugins import get_registry
from .sandbox import AsyncSandbox
from .schema import ExecutionResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "exec",
        help="run a program in the sandbox",
        description=(
            "Run code in the sandbox. Its stdout and stderr go to yours and this command exits with its "
            f"exit status ({cli.EXIT_TIMEOUT} if it timed out, {cli.EXIT_KILLED} if a limit or signal "
            "killed it or it never started)."
        ),
    )
    p.add_argument("source", nargs="?", help="file with the program, or '-' for stdin")
    p.add_argument("-c", dest="code", metavar="CODE", help="program text given inline")
    p.add_argument("-r", "--runtime", default="python3", help="runtime (default: python3)")
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="copy local PATH into the work dir as NAME (repeatable)",
    )
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="env var (repeatable)")
    p.add_argument("--session", metavar="ID", help="run in this persistent session's work dir")
    p.add_argument("--timeout", type=int, metavar="S", help="wall-clock limit in seconds")
    p.add_argument("--ephemeral", action="store_true", help="delete the work dir when the run ends")
    p.add_argument("--json", action="store_true", help="print the full result as JSON instead")
    p.set_defaults(handler=cmd_exec)

    p = sub.add_parser("files", help="fetch the files a run produced", description="Fetch a task's files.")
    p.add_argument("task_hash", help="task hash printed by 'exec --json'")
    p.add_argument("name", nargs="?", help="one file (or @stdout / @stderr); omit to list all")
    p.add_argument("-o", "--output", metavar="PATH", help="write the file to PATH instead of stdout")
    p.add_argument("--json", action="store_true", help="print files as JSON (binary as base64)")
    p.set_defaults(handler=cmd_files)

    p = sub.add_parser(
        "cleanup",
        help="delete old task and session dirs",
        description="Delete task and session dirs older than --hours (default: the environment's).",
    )
    p.add_argument("--hours", type=float, help="age threshold in hours")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_cleanup)

    p = sub.add_parser(
        "status",
        help="check the target's health",
        description="Check the target: reachability, runtimes, disk, isolation. Exit 1 if unhealthy.",
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "plugins",
        help="list loaded plugins",
        description="List plugins, their hooks and registrations.",
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=cmd_plugins)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"{what} {item!r} must look like NAME=VALUE")
        out[key] = value
    return out


def cmd_exec(args: argparse.Namespace) -> int:
    if args.code is not None and args.source is not None:
        raise InvalidInputError("give the program with -c or as a file, not both")
    if args.code is not None:
        code = args.code
    elif args.source in (None, "-"):
        if args.source is None and sys.stdin.isatty():
            raise InvalidInputError("no program: use -c CODE, a file, or '-' to read stdin")
        code = sys.stdin.read()
    else:
        code = cli.read_path(args.source).decode("utf-8")
    files = {name: cli.read_path(path) for name, path in _pairs(args.file, "--file").items()}
    env = _pairs(args.env, "--env")
    live = False

    def on_output(stream: str, chunk: bytes) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.buffer.write(chunk)
        target.flush()

    def run(sandbox: AsyncSandbox) -> Awaitable[ExecutionResult]:
        nonlocal live
        # Print as it happens where the transport streams from afar; locally the result is as quick.
        live = not args.json and sandbox.transport.supports_streaming and sandbox.transport.name != "local"
        return sandbox.execute_code(
            code,
            runtime=args.runtime,
            session_id=args.session,
            files=files,
            env_vars=env,
            create_filesystem=not args.ephemeral,
            timeout=args.timeout,
            on_output=on_output if live else None,
        )

    result = cli.with_sandbox(args, run)
    if args.json:
        print(result.model_dump_json(indent=2))
    elif not live:
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.write(result.stderr)
    if not args.json and not result.success and result.termination_reason != "exited":
        print(f"ec2-sandbox: {result.error_message} (task {result.task_hash})", file=sys.stderr)
    if result.termination_reason == "timeout":
        return cli.EXIT_TIMEOUT
    if result.termination_reason != "exited":
        return cli.EXIT_KILLED
    return result.return_code or 0


def cmd_files(args: argparse.Namespace) -> int:
    if args.name is not None and args.json:
        content = cli.with_sandbox(args, lambda sandbox: sandbox.read_task_file(args.task_hash, args.name))
        print(content.model_dump_json(indent=2))
        return 0
    if args.name is not None:
        # Page by page straight to the destination: a file of any size passes through little memory.
        with open(args.output, "wb") if args.output else nullcontext(sys.stdout.buffer) as out:
            cli.with_sandbox(
                args, lambda sandbox: sandbox.download_task_file(args.task_hash, args.name, out.write)
            )
        return 0
    listing = cli.with_sandbox(args, lambda sandbox: sandbox.list_task_files(args.task_hash))
    if args.json:
        cli.print_json(listing)
        return 0
    for entry in listing["files"] + listing["streams"]:
        print(f"{entry['size']:>12}  {entry['path']}")
    for entry in listing["skipped"]:
        print(f"{'skipped':>12}  {entry['path']} ({entry['reason']})")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    result = cli.with_sandbox(args, lambda sandbox: sandbox.cleanup_tasks(args.hours))
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(f"policy {result.policy}, older than {result.hours} h: removed {len(result.removed)}")
        for entry in result.removed:
            print(f"  {entry.kind:8} {entry.id}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = cli.with_sandbox(args, lambda sandbox: sandbox.instance_status())
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print(f"{status.transport} -> {status.target}: {'healthy' if status.healthy else 'UNHEALTHY'}")
        for part in status.parts:
            print(f"  [{'ok' if part.ok else 'FAIL'}] {part.name}: {part.message}")
        for rt in status.runtimes:
            print(f"  runtime {rt.name:10} {rt.version if rt.available else 'not available'}")
        print(f"  isolation: {status.isolation}; cgroup: {', '.join(status.cgroup_limits) or 'none'}")
        if status.disk_free_mb is not None:
            print(f"  disk free: {status.disk_free_mb:.0f} MB")
        for warning in status.warnings:
            print(f"  warning: {warning}")
    return 0 if status.healthy else 1


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    if args.json:
        cli.print_json(
            {
                "plugins": [vars(p) for p in registry.plugins],
                "disabled": registry.disabled,
                "errors": registry.errors,
            }
        )
        return 1 if registry.errors else 0
    for plugin in registry.plugins:
        label = f"{plugin.dist or '?'} {plugin.version or '?'}" + (", built-in" if plugin.builtin else "")
        print(f"{plugin.name} ({label})")
        print(f"  hooks: {', '.join(plugin.hooks) or 'none'}")
        print(f"  registered: {', '.join(plugin.registered) or 'nothing'}")
    if registry.disabled:
        print(f"not loaded (EC2_SANDBOX_PLUGINS): {', '.join(registry.disabled)}")
    for error in registry.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if registry.errors else 0
