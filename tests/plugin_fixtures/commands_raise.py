"""A plugin whose register_commands adds a command, then raises: the command must not stay."""

from ec2_sandbox import hookimpl


@hookimpl
def register_commands(subparsers):
    subparsers.add_parser("fixture-half", help="half-registered", aliases=["fixture-half-alias"])
    raise RuntimeError("cannot finish registering")
