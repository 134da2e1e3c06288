"""A plugin whose hook takes an argument the hook does not provide."""

from ec2_sandbox import hookimpl


@hookimpl
def register_runtimes(registry):
    raise AssertionError("never called")
