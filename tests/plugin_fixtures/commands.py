"""A plugin that adds commands: one that works, one that takes a core command's name, one without handler."""

from ec2_sandbox import hookimpl


def hello(args):
    from ec2_sandbox.cli import environment_config

    config = environment_config(args)
    print(f"hello {args.name} from {args.environment or 'default'} (max_memory_mb {config.max_memory_mb})")
    return 3


@hookimpl
def register_commands(subparsers):
    p = subparsers.add_parser("fixture-hello", help="say hello from a plugin command")
    p.add_argument("--name", default="world")
    p.set_defaults(handler=hello)
    taken = subparsers.add_parser("exec", help="an impostor of the core's exec")
    taken.add_argument("--impostor")
    subparsers.add_parser("fixture-nohandler", help="forgets set_defaults(handler=...)")
