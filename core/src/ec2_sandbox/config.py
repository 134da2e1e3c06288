"""SandboxConfig: every setting of one environment, validated.

Loading environments from JSON files, presets and environment variables lives in
:mod:`ec2_sandbox.config_manager`; this module only says what a valid configuration is.

The core's own settings are the model's fields. A transport's settings belong to the transport: its
registration carries a pydantic options model (``register("ssh", factory, options=SSHOptions)``), and every
field of every registered options model is a setting of every environment, under its own name, next to the
core's - the way pytest's ini options are one namespace, whichever plugin adds them. So a configuration
file keeps writing ``"ssh_user": "ec2-user"`` and ``"s3_bucket": "..."`` flat, as it always has, variables
stay ``EC2_SANDBOX_<NAME>``, and ``config show`` lists them with the rest. The registry refuses an options
model whose field names are taken (by the core or by another transport's model), so a flat name always
has one owner; that is why a plugin prefixes its option names with its transport's name.

A transport reads its options typed, ``config.options(SSHOptions).ssh_user``; ``config.ssh_user`` works too
(any registered option, as an attribute). The options are validated with the rest of the configuration,
and a problem names the option and the transport and plugin it belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import PluginError

if TYPE_CHECKING:
    from .plugins import Registry, TransportOptions

OptionsT = TypeVar("OptionsT", bound=BaseModel)

INSTANCE_ID_RE = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
REGION_RE = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d$")
#: DynamoDB table names: 3 to 255 of these characters (DynamoDB developer guide, "Naming rules").
TABLE_RE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
#: Auto Scaling group names: 1 to 255 characters without control characters (CreateAutoScalingGroup API).
GROUP_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")
#: The fields that name where a fleet's members come from; exactly one is set for a fleet.
FLEET_SOURCES = ("fleet_auto_scaling_group", "fleet_tags", "fleet_instance_ids")


def _tag_problem(tag: str) -> str | None:
    """What is wrong with a 'Key=Value' tag filter. Tag keys have 1-128 characters, values up to 256, and
    'aws:' keys are AWS's (EC2 user guide, "Tag restrictions"); the first '=' ends the key."""
    key, sep, value = tag.partition("=")
    if not sep or not 1 <= len(key) <= 128 or len(value) > 256 or key.startswith("aws:"):
        return (
            "is not 'Key=Value' (key 1-128 characters without '=', not starting with 'aws:'; value up to 256 "
            "characters)"
        )
    if any(ord(c) < 32 for c in tag):
        return "contains control characters"
    return None


def _instance_problem(instance_id: str) -> str | None:
    if not INSTANCE_ID_RE.match(instance_id):
        return "is not an instance id: expected 'i-' and 8 or 17 hex digits"
    return None


class SandboxConfig(BaseModel):
    """Settings of one environment: the core's fields, and the options of every registered transport.

    Unknown fields are errors: a typo must not be silently ignored. Validation takes the plugin registry
    from the context key ``registry`` (the process-wide one otherwise).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Options model -> its validated instance, for every options model the registry has.
    _options: dict[type[BaseModel], BaseModel] = PrivateAttr(default_factory=dict)

    # --- where code runs -------------------------------------------------------------------------
    transport: str = Field(
        default="auto",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description=(
            "How to reach the target: 'auto' (fleet when a fleet is named, ssm when instance_id is set, "
            "local otherwise), 'local', 'ssm', 'eic', 'ssh', 'fleet', or a transport a plugin registers."
        ),
    )
    instance_id: str | None = Field(default=None, description="EC2 instance id, e.g. i-0123456789abcdef0.")
    region: str | None = Field(default=None, description="AWS region, e.g. us-east-1.")
    base_sandbox_dir: str | None = Field(
        default=None,
        description=(
            "Where work dirs live on the target. Default: /var/lib/ec2-sandbox when the runner is root, "
            "else $XDG_STATE_HOME/ec2-sandbox."
        ),
    )

    # --- AWS authentication ----------------------------------------------------------------------
    aws_profile: str | None = Field(default=None, description="Named AWS profile to use.")
    access_key_id: str | None = Field(default=None, description="Access key id (with secret_access_key).")
    secret_access_key: SecretStr | None = Field(default=None, description="Secret access key.")
    session_token: SecretStr | None = Field(default=None, description="Session token of temporary keys.")

    # --- limits ----------------------------------------------------------------------------------
    max_execution_time: int = Field(default=300, ge=1, le=86400, description="Wall-clock seconds per run.")
    max_memory_mb: int = Field(default=1024, ge=64, le=262144, description="Memory per run in MB.")
    max_processes: int = Field(default=64, ge=1, le=65536, description="Processes/threads per run.")
    max_file_size_mb: int = Field(
        default=100,
        ge=1,
        le=1048576,
        description="Largest file (and captured output) a run may write, MB.",
    )
    max_open_files: int = Field(default=1024, ge=16, le=1048576, description="Open file descriptors.")
    max_disk_mb: int = Field(
        default=2048,
        ge=1,
        le=16777216,
        description="Disk a task's or session's work dir may hold, MB (checked while a run goes on).",
    )
    disk_reserve_mb: int = Field(
        default=512,
        ge=0,
        le=16777216,
        description="Free disk the target keeps: no run starts below it; a run that goes below it is ended.",
    )
    max_output_chars: int = Field(
        default=20000,
        ge=200,
        le=10_000_000,
        description="Characters of stdout/stderr returned inline.",
    )
    cleanup_after_hours: int = Field(default=24, ge=1, le=8760, description="Age at which cleanup removes.")
    session_idle_timeout: int = Field(
        default=1800,
        ge=10,
        le=7 * 86400,
        description=(
            "Seconds a session's persistent interpreter may sit idle before it exits (its files stay); the "
            "next stateful call starts a fresh one and says the state was lost to idleness."
        ),
    )
    allowed_runtimes: list[str] | None = Field(
        default=None, description="Runtimes callers may use; None allows every registered runtime."
    )
    network: bool = Field(default=False, description="May user code reach the network.")
    isolation: Literal["auto", "bwrap", "none"] = Field(
        default="auto",
        description=(
            "'auto': bubblewrap when usable; 'bwrap': refuse to run without it; 'none': no bubblewrap "
            "(a root runner still gives each session its own uid and, with network off, its own network "
            "namespace)."
        ),
    )
    warm_start: bool = Field(
        default=True,
        description=(
            "Where the runner is long-lived (the in-process local transport), fork Python runs from an "
            "interpreter that is already running, inside the run's own bubblewrap sandbox, instead of "
            "starting a new one. Runs that set PYTHON*, LC_*, LANG, LD_* or HOME still start cold."
        ),
    )
    syscall_filter: Literal["default", "none"] = Field(
        default="default",
        description=(
            "'default': every run behind a seccomp filter at least as strict as Docker's default profile "
            "(io_uring, keyctl, bpf, ptrace, mounts, namespaces, kernel modules and the like refused); "
            "'none': no filter. A runtime may allow calls it needs (Runtime.syscalls_allowed)."
        ),
    )
    cleanup_policy: str = Field(default="age", description="Cleanup policy (plugins may add more).")

    # --- fleets (many instances; see README "Fleets") ---------------------------------------------
    fleet_auto_scaling_group: str | None = Field(
        default=None, description="Fleet: the members are the InService instances of this Auto Scaling group."
    )
    fleet_tags: list[str] | None = Field(
        default=None,
        description="Fleet: the members are the running instances carrying all these 'Key=Value' tags.",
    )
    fleet_instance_ids: list[str] | None = Field(
        default=None, description="Fleet: the members are these instances (those of them that are running)."
    )
    fleet_table: str | None = Field(
        default=None,
        description=(
            "Fleet: the DynamoDB table (partition key 'pk', sort key 'sk', both strings) that holds session "
            "placements and slot leases, shared by every client of the fleet."
        ),
    )
    fleet_slots_per_instance: int = Field(
        default=0,
        ge=0,
        le=1024,
        description=(
            "Fleet: sessions and session-less runs one member holds at once; 0: its vCPUs times "
            "fleet_slots_per_vcpu. Every client of a fleet must agree on it."
        ),
    )
    fleet_slots_per_vcpu: int = Field(
        default=4, ge=1, le=256, description="Fleet: slots per vCPU when fleet_slots_per_instance is null."
    )
    fleet_session_idle_seconds: int = Field(
        default=900,
        ge=60,
        le=604800,
        description=(
            "Fleet: a session keeps its slot this long after its last use (the lease each use renews); "
            "then the slot is free for others and the session takes one again on its next use."
        ),
    )
    fleet_wait_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="Fleet: how long a run waits for a free slot in a full fleet before it is refused.",
    )
    fleet_member_transport: Literal["ssm", "eic"] = Field(
        default="ssm",
        description="Fleet: how members are reached: 'ssm' (Run Command) or 'eic' (SSH, EIC keys).",
    )
    fleet_discovery_seconds: int = Field(
        default=10,
        ge=1,
        le=300,
        description="Fleet: how long the list of healthy members is reused before it is asked for again.",
    )

    @field_validator("instance_id")
    @classmethod
    def _instance(cls, value: str | None) -> str | None:
        if value is not None and not INSTANCE_ID_RE.match(value):
            raise ValueError("is not an instance id: expected 'i-' and 8 or 17 hex digits")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not REGION_RE.match(value):
            raise ValueError("is not a region name like 'us-east-1'")
        return value

    @field_validator("transport")
    @classmethod
    def _transport(cls, value: str, info: ValidationInfo) -> str:
        """Like runtimes, transports come from plugins too: checked against the registry's names when the
        configuration manager passes them as validation context ``registered_transports``."""
        registered = (info.context or {}).get("registered_transports")
        if value != "auto" and registered is not None and value not in registered:
            raise ValueError(
                f"is not a registered transport; registered (built-ins and plugins): auto, "
                f"{', '.join(sorted(registered))}"
            )
        return value

    @field_validator("allowed_runtimes")
    @classmethod
    def _runtimes(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """Runtimes must be registered; the configuration manager passes the plugin registry's names as
        validation context ``registered_runtimes`` (a config built in code is checked when it is used)."""
        if value is None:
            return None
        if not value:
            raise ValueError("is empty: list at least one runtime, or null to allow every registered runtime")
        registered = (info.context or {}).get("registered_runtimes")
        if registered is not None:
            unknown = [name for name in value if name not in registered]
            if unknown:
                raise ValueError(
                    f"names runtime(s) not registered: {', '.join(unknown)}; registered (built-ins and "
                    f"plugins): {', '.join(sorted(registered))}"
                )
        return list(dict.fromkeys(value))

    @field_validator("fleet_auto_scaling_group", "fleet_table")
    @classmethod
    def _aws_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern, rule = {
            "fleet_auto_scaling_group": (
                GROUP_RE,
                "an Auto Scaling group name: 1 to 255 characters, no control characters",
            ),
            "fleet_table": (TABLE_RE, "a DynamoDB table name: 3 to 255 of A-Z a-z 0-9 _ . -"),
        }[str(info.field_name)]
        if value is not None and not pattern.match(value):
            raise ValueError(f"is not {rule}")
        return value

    @field_validator("fleet_tags", "fleet_instance_ids")
    @classmethod
    def _fleet_list(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        tags = info.field_name == "fleet_tags"
        if not value:
            raise ValueError(
                f"is empty: list at least one {'Key=Value tag' if tags else 'instance id'}, or null"
            )
        for item in value:
            problem = _tag_problem(item) if tags else _instance_problem(item)
            if problem:
                raise ValueError(f"has {item!r}, which {problem}")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _fleet(self) -> SandboxConfig:
        sources = [name for name in FLEET_SOURCES if getattr(self, name) is not None]
        if len(sources) > 1:
            raise ValueError(
                f"a fleet has one source of members, but {' and '.join(sources)} are both set: keep one"
            )
        if not sources:
            if self.transport == "fleet":
                raise ValueError(
                    "transport 'fleet' needs its members: set fleet_auto_scaling_group, fleet_tags or "
                    "fleet_instance_ids"
                )
            return self
        if self.instance_id:
            raise ValueError(
                f"instance_id and {sources[0]} are both set: an environment runs on one instance or on a "
                "fleet; remove one"
            )
        if self.transport not in ("auto", "fleet"):
            raise ValueError(
                f"{sources[0]} is set but transport is {self.transport!r}: a fleet runs through transport "
                "'fleet' (or 'auto')"
            )
        if not self.fleet_table:
            raise ValueError(
                f"{sources[0]} is set but fleet_table is not: a fleet keeps its session placements and slot "
                "leases in a DynamoDB table; name it in fleet_table"
            )
        return self

    @property
    def is_fleet(self) -> bool:
        return any(getattr(self, name) is not None for name in FLEET_SOURCES)

    @model_validator(mode="after")
    def _key_pair(self) -> SandboxConfig:
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError(
                "access_key_id and secret_access_key go together: give both, or neither to use "
                "aws_profile or the default credential chain"
            )
        if self.session_token and not self.access_key_id:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        return self

    # ------------------------------------------------------------------ transports' options
    @model_validator(mode="wrap")
    @classmethod
    def _with_options(
        cls, data: Any, handler: ModelWrapValidatorHandler[SandboxConfig], info: ValidationInfo
    ) -> SandboxConfig:
        """Split the values into the core's and each options model's, validate all of them, and report
        every problem of both at once (the options' naming their transport and plugin)."""
        if not isinstance(data, Mapping):
            return handler(data)  # an instance (validate_assignment, model_validate(config)): kept as it is
        registry = _registry(info.context)
        owners = registry.option_fields()
        given: dict[type[BaseModel], dict[str, Any]] = {}
        for key, value in data.items():
            if key in owners:
                given.setdefault(owners[key].model, {})[key] = value
        errors: list[InitErrorDetails] = []
        config = None
        try:
            config = handler({k: v for k, v in data.items() if k not in owners})
        except ValidationError as exc:
            errors += [_details(err) for err in exc.errors()]
        options: dict[type[BaseModel], BaseModel] = {}
        strict = bool((info.context or {}).get("strict"))
        for spec in registry.options:
            try:
                options[spec.model] = spec.model.model_validate(
                    given.get(spec.model, {}), strict=strict, context=info.context
                )
            except ValidationError as exc:
                errors += [_details(err, spec) for err in exc.errors()]
            except Exception as exc:  # pydantic only turns ValueError and AssertionError into errors
                raise PluginError(
                    f"{spec.owner()}: its options model {spec.model.__name__} raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        assert config is not None
        config._options = options
        return config

    def options(self, model: type[OptionsT]) -> OptionsT:
        """The settings a transport's options model holds, typed: ``config.options(SSHOptions).ssh_user``.
        A model the registry does not have cannot have been given values: its defaults."""
        found = self._options.get(model)
        return found if isinstance(found, model) else model()

    @property
    def option_values(self) -> dict[str, Any]:
        """Every transport option by name (secrets as SecretStr)."""
        return {name: getattr(o, name) for o in self._options.values() for name in type(o).model_fields}

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the core's fields never come here.
        if not name.startswith("_"):
            for options in (self.__pydantic_private__ or {}).get("_options", {}).values():
                if name in type(options).model_fields:
                    return getattr(options, name)
        # pydantic defines BaseModel.__getattr__ only when not TYPE_CHECKING (so that a type checker flags
        # unknown attributes): mypy sees no such method on the base, which has it at run time.
        return super().__getattr__(name)  # type: ignore[misc]

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in type(self).model_fields:
            for model, options in self._options.items():
                if name in model.model_fields:
                    values = {n: getattr(options, n) for n in model.model_fields}
                    # A new dict: copies made by model_copy() share the old one.
                    self._options = {**self._options, model: model.model_validate({**values, name: value})}
                    return
        super().__setattr__(name, value)

    @model_serializer(mode="wrap")
    def _dump_with_options(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """Options are dumped flat with the core's fields, so a dump validates back to an equal config."""
        data = handler(self)
        if isinstance(data, dict):
            for options in self._options.values():
                data.update(options.model_dump(mode=info.mode))
        return data

    def __repr_args__(self) -> Any:
        yield from super().__repr_args__()
        for options in self._options.values():
            yield from options.__repr_args__()

    @property
    def resolved_transport(self) -> str:
        if self.transport != "auto":
            return self.transport
        if self.is_fleet:
            return "fleet"
        return "ssm" if self.instance_id else "local"


def _registry(context: Mapping[str, Any] | None) -> Registry:
    registry = (context or {}).get("registry")
    if registry is None:
        from .plugins import get_registry

        registry = get_registry()
    return registry


def _details(err: Any, spec: TransportOptions | None = None) -> InitErrorDetails:
    """One error of a validation, to be raised again with the others; an option's names its owner."""
    if spec is None:
        return {"type": err["type"], "loc": err["loc"], "input": err["input"], "ctx": err.get("ctx", {})}
    return {
        "type": PydanticCustomError(err["type"], f"{err['msg']} ({spec.owner()})", err.get("ctx")),
        "loc": err["loc"],
        "input": err["input"],
    }
