"""A plugin that raises in one hook after registering something, and behaves in another."""

from ec2_sandbox import Runtime, hookimpl


class KeepAllPolicy:
    name = "fixture-keep-all"
    needs_sizes = False

    def select(self, inventory, hours, config):
        return []


@hookimpl
def register_runtimes(register):
    register(
        Runtime(
            name="half-registered",
            description="Registered just before the hook raises: must be dropped.",
            filename="x.sh",
            argv=["sh", "{file}"],
            version_argv=["sh", "-c", "echo 1"],
        )
    )
    raise RuntimeError("cannot find the toolchain")


@hookimpl
def register_cleanup_policies(register):
    register(KeepAllPolicy())
