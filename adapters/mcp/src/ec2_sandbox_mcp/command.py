"""``ec2-sandbox mcp``: serve the four tools to MCP clients (stdio, or streamable HTTP on 127.0.0.1).

Added to the command line by this distribution's ``ec2_sandbox`` entry point, so the command is there
exactly when ec2-sandbox-mcp is installed. This module is imported whenever ec2-sandbox loads its plugins:
the MCP SDK and the command line are imported only when the command is built or run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from ec2_sandbox import hookimpl
from ec2_sandbox.hookspecs import Subparsers


@hookimpl
def register_commands(subparsers: Subparsers) -> None:
    from ec2_sandbox.cli import EXIT_STATUS_HELP  # the command line is being built: already imported

    parser = subparsers.add_parser(
        "mcp",
        help="serve the sandbox tools to MCP clients (Claude Desktop, IDEs, agent SDKs)",
        description=(
            "Serve ec2_code_execution, ec2_get_files, ec2_cleanup_tasks and ec2_instance_status over the "
            "Model Context Protocol. stdio (the default) is what desktop clients launch; 'http' serves "
            "streamable HTTP at http://127.0.0.1:PORT/mcp on the loopback interface only."
        ),
        epilog=EXIT_STATUS_HELP,
    )
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="default: stdio")
    parser.add_argument(
        "--port",
        type=int,
        default=8765,
        help="port for --transport http (default: 8765); the address is announced on stderr once it listens",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ec2_sandbox.cli import EXIT_FAILED, open_sandbox, run_async

    from .server import serve

    if not 0 < args.port < 65536:
        print(f"ec2-sandbox: --port {args.port} is not a TCP port (1-65535)", file=sys.stderr)
        return EXIT_FAILED
    sandbox = open_sandbox(args)
    listening = False

    def announce(url: str) -> None:
        nonlocal listening
        listening = True
        print(f"ec2-sandbox: MCP over streamable HTTP at {url}", file=sys.stderr, flush=True)

    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server is stopped
            run_async(serve(sandbox, transport=args.transport, port=args.port, on_ready=announce))
    except OSError as exc:
        if args.transport != "http" or listening:
            raise
        print(
            f"ec2-sandbox: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}; choose another --port",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0
