"""A plugin that registers malformed things next to one valid runtime."""

from ec2_sandbox import hookimpl


class NoSelect:
    name = "fixture-no-select"


@hookimpl
def register_runtimes(register):
    register("ruby")  # a string, not a Runtime
    register({"name": "Bad Name!", "description": "x", "filename": "a", "argv": ["a"], "version_argv": ["a"]})
    register(
        {
            "name": "fixture-dict",
            "description": "A valid runtime given as a dict.",
            "filename": "main.sh",
            "argv": ["sh", "{file}"],
            "version_argv": ["sh", "-c", "echo dict 2"],
        }
    )


@hookimpl
def register_transports(register):
    register(42, None)


@hookimpl
def register_cleanup_policies(register):
    register(NoSelect())
