"""Subcommands that use a sandbox after a run: files, cleanup, status; and plugins."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from typing import BinaryIO

from . import cli
from .errors import InvalidInputError
from .hookspecs import Subparsers
from .plugins import get_registry


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "files",
        help="fetch the files a run produced",
        description="List a task's files, or write one (or the run's full @stdout / @stderr) byte for byte.",
        epilog=cli.EXIT_STATUS_HELP,
    )
    p.add_argument(
        "task_hash",
        help="the run's task hash: 'exec' names it on stderr (on a terminal, with -v, or when the run did "
        "not end by itself) and 'exec --json' includes it",
    )
    p.add_argument("name", nargs="?", help="one file (or @stdout / @stderr); omit to list all")
    p.add_argument("-o", "--output", metavar="PATH", help="write the file to PATH instead of stdout")
    p.add_argument("--force", action="store_true", help="let -o overwrite an existing PATH")
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
        description="Check the target: reachability, runtimes, disk, isolation. Exit status 1 if unhealthy.",
        epilog=cli.EXIT_STATUS_HELP,
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


def cmd_files(args: argparse.Namespace) -> int:
    if args.name is not None and args.json:
        content = cli.with_sandbox(args, lambda sandbox: sandbox.read_task_file(args.task_hash, args.name))
        print(content.model_dump_json(indent=2))
        return 0
    if args.name is not None:
        # Page by page straight to the destination: a file of any size passes through little memory.
        with open_output(args.output, args.force) if args.output else nullcontext(sys.stdout.buffer) as out:
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


def open_output(path: str, force: bool) -> BinaryIO:
    try:
        return open(path, "wb" if force else "xb")  # the caller closes it
    except FileExistsError:
        raise InvalidInputError(f"{path} exists; pass --force to overwrite it") from None


def cmd_cleanup(args: argparse.Namespace) -> int:
    result = cli.with_sandbox(args, lambda sandbox: sandbox.cleanup_tasks(args.hours))
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(f"policy {result.policy}, older than {result.hours} h: removed {len(result.removed)}")
        for entry in result.removed:
            print(f"  {entry.kind:8} {entry.id}")
        for kept in result.skipped:
            print(f"  kept     {kept.kind} {kept.id}: {kept.reason}; a later cleanup removes it")
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
