"""A plugin whose hook builds a configuration while the registry is loading: it must get a PluginError."""

from ec2_sandbox import SandboxConfig, hookimpl


@hookimpl
def register_runtimes(register):
    SandboxConfig()
