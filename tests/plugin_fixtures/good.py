"""A well-behaved plugin: one of each kind of registration."""

from ec2_sandbox import Runtime, hookimpl
from ec2_sandbox.transports.local import LocalTransport

FIXTURE_SH = Runtime(
    name="fixture-sh",
    description="sh, registered by the good fixture plugin.",
    filename="prog.sh",
    argv=["sh", "{file}"],
    version_argv=["sh", "-c", "echo fixture-sh 1.0"],
)


class NothingPolicy:
    name = "fixture-nothing"
    needs_sizes = True

    def select(self, inventory, hours, config):
        return []


def make_transport(config):
    return LocalTransport(mode="subprocess")


@hookimpl
def register_runtimes(register):
    register(FIXTURE_SH)


@hookimpl
def register_transports(register):
    register("fixture-local", make_transport)


@hookimpl
def register_cleanup_policies(register):
    register(NothingPolicy())
