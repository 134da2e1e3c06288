"""Transports that misbehave: options models that cannot be used (each registration is dropped with the
reason), and factories that fail or return something that is not a Transport (PluginError when used)."""

from pydantic import BaseModel

from ec2_sandbox import hookimpl
from ec2_sandbox.transports.local import create_local_transport


class TakesSSHUser(BaseModel):
    ssh_user: str = "me"  # the built-in ssh transport's


class TakesCoreField(BaseModel):
    max_memory_mb: int = 1  # a core setting


class NoDefault(BaseModel):
    fixture_required: str


class BadName(BaseModel):
    FixtureUpper: int = 1


class Fine(BaseModel):
    fixture_fine: int = 1


@hookimpl
def register_transports(register):
    register("fixture-clash", create_local_transport, options=TakesSSHUser)
    register("fixture-core", create_local_transport, options=TakesCoreField)
    register("fixture-nodefault", create_local_transport, options=NoDefault)
    register("fixture-badname", create_local_transport, options=BadName)
    register("fixture-notamodel", create_local_transport, options={"fixture_x": 1})
    register("fixture-fine", lambda config: 42, options=Fine)
    register("fixture-raising", _raising)


def _raising(config):
    return {}["no such key"]
