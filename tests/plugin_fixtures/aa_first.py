"""A plugin loaded first among plugins (entry point 'aa-first') that claims the good plugin's runtime."""

from ec2_sandbox import Runtime, hookimpl


@hookimpl
def register_runtimes(register):
    register(
        Runtime(
            name="fixture-sh",
            description="fixture-sh from aa-first, which loads before 'good'.",
            filename="first.sh",
            argv=["sh", "{file}"],
            version_argv=["sh", "-c", "echo aa-first"],
        )
    )
