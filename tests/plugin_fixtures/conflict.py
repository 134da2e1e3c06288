"""A plugin loaded last (entry point 'zz-conflict') that claims names others registered first."""

from ec2_sandbox import Runtime, hookimpl


def _sh(name, description):
    return Runtime(
        name=name, description=description, filename="x.sh", argv=["sh", "{file}"], version_argv=["true"]
    )


@hookimpl
def register_runtimes(register):
    register(_sh("python3", "An impostor python3."))
    register(_sh("perl", "An impostor perl."))
    register(_sh("fixture-sh", "An impostor fixture-sh."))
    register(_sh("zz-only", "A name nobody else uses: kept."))


@hookimpl
def register_transports(register):
    from ec2_sandbox.transports.local import create_local_transport

    register("local", create_local_transport)
