"""A plugin with a misspelled hook (register_runtime, singular)."""

from ec2_sandbox import Runtime, hookimpl


@hookimpl
def register_runtime(register):
    register(
        Runtime(
            name="never",
            description="Must never be registered.",
            filename="x.sh",
            argv=["sh", "{file}"],
            version_argv=["sh", "-c", "echo 1"],
        )
    )
