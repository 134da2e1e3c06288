"""SandboxConfig: every setting of one environment, validated.

Loading environments from JSON files, presets and environment variables lives in
:mod:`ec2_sandbox.config_manager`; this module only says what a valid configuration is.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

INSTANCE_ID_RE = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
REGION_RE = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d$")


class SandboxConfig(BaseModel):
    """Settings of one environment. Unknown fields are errors: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- where code runs -------------------------------------------------------------------------
    transport: str = Field(
        default="auto",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description=(
            "How to reach the target: 'auto' (ssm when instance_id is set, local otherwise), 'local', 'ssm', "
            "'eic', 'ssh', or a transport a plugin registers."
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

    # --- SSH / EC2 Instance Connect ---------------------------------------------------------------
    ssh_user: str = Field(default="ubuntu", description="OS user for EIC/SSH connections.")
    ssh_port: int = Field(default=22, ge=1, le=65535, description="SSH port on the target.")
    ssh_host: str | None = Field(default=None, description="Host for plain 'ssh' transport.")
    ssh_key_file: str | None = Field(default=None, description="Private key file for plain 'ssh'.")
    eic_endpoint_id: str | None = Field(default=None, description="EC2 Instance Connect Endpoint id.")
    eic_address: Literal["public", "private"] = Field(
        default="public", description="Which address of the instance 'eic' connects to (no endpoint)."
    )
    ssh_known_hosts: str | None = Field(
        default=None, description="known_hosts file (default: ~/.cache/ec2-sandbox/known_hosts)."
    )
    ssh_strict_host_keys: bool = Field(
        default=False, description="Refuse unknown host keys instead of trusting them on first use."
    )
    ssh_sudo: bool = Field(
        default=False, description="Start the runner with 'sudo -n' (root runner: per-session uids)."
    )

    # --- large transfers ---------------------------------------------------------------------------
    s3_bucket: str | None = Field(default=None, description="Bucket for staging large inputs and outputs.")

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

    @property
    def resolved_transport(self) -> str:
        if self.transport != "auto":
            return self.transport
        return "ssm" if self.instance_id else "local"
