"""A plugin that returns its runtimes instead of calling register()."""

from ec2_sandbox import Runtime, hookimpl


@hookimpl
def register_runtimes():
    return [
        Runtime(
            name="returned",
            description="Returned, not registered.",
            filename="x.sh",
            argv=["sh", "{file}"],
            version_argv=["sh", "-c", "echo 1"],
        )
    ]
