"""A plugin transport that carries an options model: its settings live in every environment, flat."""

from pydantic import BaseModel, Field, SecretStr, field_validator

from ec2_sandbox import hookimpl
from ec2_sandbox.transports.local import LocalTransport


class FixtureOptions(BaseModel):
    fixture_host: str | None = Field(default=None, description="Where the fixture transport goes.")
    fixture_port: int = Field(default=7000, ge=1, le=65535, description="Its port.")
    fixture_modes: list[str] = Field(default_factory=lambda: ["a"], description="Modes, as a list.")
    fixture_token: SecretStr | None = Field(default=None, description="A secret of the plugin.")

    @field_validator("fixture_host")
    @classmethod
    def _no_spaces(cls, value: str | None) -> str | None:
        if value is not None and " " in value:
            raise ValueError("must not contain spaces")
        return value

    @field_validator("fixture_modes")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        if "explode" in value:
            raise TypeError("a bug in the plugin's validator")  # not a ValueError: pydantic lets it through
        return value


class OptionsTransport(LocalTransport):
    """The local transport, remembering the options it was made with."""

    def __init__(self, options: FixtureOptions) -> None:
        super().__init__(mode="subprocess")
        self.options = options


def make_transport(config):
    return OptionsTransport(config.options(FixtureOptions))


@hookimpl
def register_transports(register):
    register("fixture-opts", make_transport, options=FixtureOptions)
