"""Named environments: presets shipped with the package, a JSON file, environment variables, arguments.

A configuration file is a JSON object whose top-level keys are environment names; keys starting with ``_``
are comments (at the top level and inside an environment). Each environment holds
:class:`~ec2_sandbox.config.SandboxConfig` fields and may ``extends`` another environment of the same file
or a preset.

Layers, weakest first; each value remembers the layer it came from (``ec2-sandbox config show``)::

    built-in default < preset < configuration file (following extends) < environment variables < arguments

An environment of the file without ``extends`` starts from the preset of the same name when there is one
(so ``{"production": {"instance_id": "i-..."}}`` is the production preset on that instance), otherwise from
the built-in defaults, which are the ``default`` preset's values.

Settings of a transport (``ssh_user``, ``s3_bucket``, a plugin's) are flat keys like the core's: each is a
field of the options model its transport registered (:mod:`ec2_sandbox.config`), and is read, layered,
overridden (``EC2_SANDBOX_<NAME>``, ``--set``) and shown exactly as the core's fields are.

Every problem of an environment is reported at once, each naming ``environment.field``, the bad value (never
a secret's) and the rule, plus where the value came from: :class:`InvalidConfigError` (a
:class:`~ec2_sandbox.errors.ConfigError`).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from .config import SandboxConfig
from .errors import ConfigError
from .plugins import Registry, TransportOptions, get_registry

log = logging.getLogger(__name__)

CONFIG_ENV_VAR = "EC2_SANDBOX_CONFIG"
DEFAULT_CONFIG_FILE = "config.json"
ENV_PREFIX = "EC2_SANDBOX_"
#: The presets in the order they are listed.
PRESET_NAMES = ("default", "development", "production", "data-science", "web-development", "education")
SECRET_FIELDS = frozenset({"secret_access_key", "session_token"})
MASK = "****"
TEMPLATE_HINT = "create one with 'ec2-sandbox config template --output PATH'"

#: The original tool's variables and AWS's own, weakest first (for one field, the later one wins);
#: ``EC2_SANDBOX_<FIELD>`` is stronger than all of them.
ENV_ALIASES: tuple[tuple[str, str], ...] = (
    ("EC2_INSTANCE_ID", "instance_id"),
    ("AWS_DEFAULT_REGION", "region"),
    ("AWS_REGION", "region"),
    ("AWS_PROFILE", "aws_profile"),
    ("MAX_EXECUTION_TIME", "max_execution_time"),
    ("MAX_MEMORY_MB", "max_memory_mb"),
    ("SANDBOX_BASE_DIR", "base_sandbox_dir"),
    ("CLEANUP_AFTER_HOURS", "cleanup_after_hours"),
)
#: ``EC2_SANDBOX_*`` variables that are settings of something else, not fields.
OTHER_PREFIXED_VARS = frozenset(
    {
        "EC2_SANDBOX_CONFIG",
        "EC2_SANDBOX_PLUGINS",
        "EC2_SANDBOX_NO_SKIPS",
        "EC2_SANDBOX_KEEP_NEWEST",
        "EC2_SANDBOX_REQUEST",
        "EC2_SANDBOX_CGROUP",
        "EC2_SANDBOX_CGROUP_ROOT",
    }
)

DEFAULT_SOURCE = "built-in"
ARGUMENT_SOURCE = "argument"


def fields(registry: Registry | None = None) -> list[str]:
    """Every setting: the core's fields, then each registered transport's options."""
    return [*SandboxConfig.model_fields, *(registry or get_registry()).option_fields()]


def field_info(name: str, registry: Registry | None = None) -> FieldInfo | None:
    """The pydantic field of setting ``name`` (core or option); None for an unknown name."""
    if name in SandboxConfig.model_fields:
        return SandboxConfig.model_fields[name]
    spec = (registry or get_registry()).option_fields().get(name)
    return spec.model.model_fields[name] if spec is not None else None


def option_owner(name: str, registry: Registry | None = None) -> TransportOptions | None:
    """The options model (and its transport and plugin) that declares setting ``name``; None for a core
    field or an unknown name."""
    return (registry or get_registry()).option_fields().get(name)


def is_secret(name: str, registry: Registry | None = None) -> bool:
    """Whether setting ``name`` is a secret: the core's keys, and any option typed SecretStr."""
    if name in SECRET_FIELDS:
        return True
    info = field_info(name, registry)
    return info is not None and "SecretStr" in str(info.annotation)


def env_var_for(name: str) -> str:
    """The generic variable of a field: ``max_memory_mb`` -> ``EC2_SANDBOX_MAX_MEMORY_MB``."""
    return ENV_PREFIX + name.upper()


def is_list_field(name: str, registry: Registry | None = None) -> bool:
    """Whether field ``name`` holds a list (an unknown name does not)."""
    info = field_info(name, registry)
    return info is not None and "list" in str(info.annotation)


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a list field as written in an argument or a variable."""
    return [part.strip() for part in text.split(",") if part.strip()]


#: How a boolean may be written where values are text (variables, ``config show --set``). A JSON file has
#: booleans of its own: there only ``true`` and ``false`` are booleans.
TEXT_BOOLEANS = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}


def from_text(name: str, raw: str, registry: Registry | None = None) -> Any:
    """The value of field ``name`` written as text (a variable, ``--set``): numbers as digits, booleans as
    :data:`TEXT_BOOLEANS`, lists as ``a,b`` or a JSON list. Text that does not parse is returned as it is,
    for validation to name the rule it breaks; a malformed JSON list raises ValueError."""
    info = field_info(name, registry)
    kind = info.annotation if info is not None else None
    if is_list_field(name, registry):
        return _parse_list(raw)
    if kind is bool:
        return TEXT_BOOLEANS.get(raw.strip().lower(), raw)
    if kind is int:
        try:
            return int(raw.strip())
        except ValueError:
            return raw
    return raw


def mask(name: str, value: Any) -> Any:
    """A value fit to print: secrets become ``****``; the access key id keeps its first and last 4."""
    if value is None:
        return None
    # An option typed SecretStr is one once validated: no registry is needed to know it.
    if name in SECRET_FIELDS or isinstance(value, SecretStr):
        return MASK
    if name == "access_key_id" and isinstance(value, str) and len(value) > 8:
        return f"{value[:4]}…{value[-4:]}"
    return value


def scrub(text: str, config: SandboxConfig | Mapping[str, Any] | None) -> str:
    """Remove any secret of ``config`` from a message (errors of third-party libraries)."""
    if config is None:
        return text
    if isinstance(config, Mapping):
        named = [config.get(name) for name in SECRET_FIELDS]
        typed = [v for v in config.values() if isinstance(v, SecretStr)]
    else:  # the core's secrets, and every option typed SecretStr
        named = [getattr(config, name, None) for name in SECRET_FIELDS]
        typed = [v for v in config.option_values.values() if isinstance(v, SecretStr)]
    for value in [*named, *typed]:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and value:
            text = text.replace(value, MASK)
    return text


class InvalidConfigError(ConfigError):
    """One or more environments are invalid; ``problems`` lists each, already worded for a user."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            super().__init__(f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class EnvironmentInfo:
    """One environment a manager can serve, and where it is defined."""

    name: str
    source: str  # "preset", the file's path, or "<path> (over preset)"
    is_preset: bool


@dataclass
class ResolvedConfig:
    """An environment's effective configuration and the layer each value came from."""

    name: str
    config: SandboxConfig
    sources: dict[str, str] = field(default_factory=dict)
    #: Option name -> the transport options it belongs to (the core's fields are not in it).
    options: dict[str, TransportOptions] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, Any, str]]:
        """(field, printable value, source) for every field, secrets masked."""
        data = self.config.model_dump()
        return [(n, mask(n, data[n]), self.sources.get(n, DEFAULT_SOURCE)) for n in data]


@dataclass
class _Layer:
    values: dict[str, Any]
    source: str
    #: Per-field sources where they differ (the variables layer: each value names its variable).
    field_sources: dict[str, str] = field(default_factory=dict)
    #: Values as written where that was text (variables): a problem quotes what the user typed.
    texts: dict[str, str] = field(default_factory=dict)

    def source_of(self, key: str) -> str:
        return self.field_sources.get(key, self.source)


# --------------------------------------------------------------------------------------------- reading


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r} (JSON would silently keep only the last one)")
        seen[key] = value
    return seen


def _load_json(text: str, where: str, registry: Registry) -> dict[str, Any]:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except ValueError as exc:  # a duplicate key
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: the top level must be a JSON object of environments "
            f'(like {{"default": {{...}}}}), not {_json_type(data)}'
        )
    envs: dict[str, Any] = {}
    problems = []
    for name, body in data.items():
        if name.startswith("_"):
            continue
        if not isinstance(body, dict):
            problems.append(
                f"{name}: an environment must be a JSON object of settings, not {_json_type(body)}"
            )
            continue
        envs[name] = _protect({k: v for k, v in body.items() if not k.startswith("_")}, registry)
    if problems:
        raise InvalidConfigError([f"{where}: {p}" for p in problems])
    return envs


def _protect(values: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """Wrap secrets (the core's and any option typed SecretStr) as soon as they are read, so no dict, repr
    or traceback of ours shows them."""
    secret = {k for k in values if is_secret(k, registry)}
    return {k: SecretStr(v) if k in secret and isinstance(v, str) else v for k, v in values.items()}


def _json_type(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _read_presets(registry: Registry) -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    folder = resources.files("ec2_sandbox") / "environments"
    entries = sorted(
        (e for e in folder.iterdir() if e.name.endswith(".json")),
        key=lambda e: (PRESET_NAMES.index(e.name[:-5]) if e.name[:-5] in PRESET_NAMES else 99, e.name),
    )
    for entry in entries:
        presets.update(_load_json(entry.read_text(encoding="utf-8"), f"preset file {entry.name}", registry))
    return presets


def preset_path(name: str) -> Path:
    """The JSON file a preset ships in (inside the installed package)."""
    return Path(str(resources.files("ec2_sandbox") / "environments" / f"{name}.json"))


# --------------------------------------------------------------------------------------------- manager


class ConfigManager:
    """Serves environments: the presets, plus those of a configuration file when there is one.

    ``path``: the file to read. None looks for ``$EC2_SANDBOX_CONFIG``, then ``./config.json``; with
    neither, only the presets are served. A file named explicitly (argument or variable) must exist.
    ``environ`` (default ``os.environ``) supplies the override variables; ``registry`` (default: the
    process's) says which transports and transport options exist; ``registered_runtimes`` and
    ``registered_policies`` (default: the registry's) are what ``allowed_runtimes`` and ``cleanup_policy``
    are checked against.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        registered_runtimes: Iterable[str] | None = None,
        registered_policies: Iterable[str] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.registry = registry or get_registry()
        self._registered = None if registered_runtimes is None else set(registered_runtimes)
        self._policies = None if registered_policies is None else set(registered_policies)
        self.presets = _read_presets(self.registry)
        self.path: Path | None = None
        self.file_envs: dict[str, dict[str, Any]] = {}
        explicit = path if path is not None else self.environ.get(CONFIG_ENV_VAR) or None
        if explicit is not None:
            how = "" if path is not None else f" (named by {CONFIG_ENV_VAR})"
            self.path = Path(explicit)
            if not self.path.is_file():
                state = "is not a file" if self.path.exists() else "does not exist"
                raise ConfigError(f"configuration file {str(self.path)!r}{how} {state}; {TEMPLATE_HINT}")
        elif Path(DEFAULT_CONFIG_FILE).is_file():
            self.path = Path(DEFAULT_CONFIG_FILE)
        if self.path is not None:
            try:
                text = self.path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read configuration file {str(self.path)!r}: {exc}") from None
            self.file_envs = _load_json(text, str(self.path), self.registry)
            log.debug("configuration file %s: environments %s", self.path, ", ".join(self.file_envs))

    # ------------------------------------------------------------------ what is there
    @property
    def registered_runtimes(self) -> set[str]:
        if self._registered is None:
            self._registered = set(self.registry.runtimes)
        return self._registered

    @property
    def registered_transports(self) -> set[str]:
        return set(self.registry.transports)

    @property
    def registered_policies(self) -> set[str]:
        if self._policies is None:
            self._policies = set(self.registry.cleanup_policies)
        return self._policies

    def environments(self) -> list[EnvironmentInfo]:
        """Presets first (in their usual order), then the file's own environments in file order."""
        out = []
        for name in self.presets:
            if name in self.file_envs:
                out.append(EnvironmentInfo(name, f"{self.path} (over preset)", True))
            else:
                out.append(EnvironmentInfo(name, "preset", True))
        out += [EnvironmentInfo(n, str(self.path), False) for n in self.file_envs if n not in self.presets]
        return out

    def warnings(self) -> list[str]:
        """Advice that does not make the configuration invalid: a file holding secrets others can read."""
        if self.path is None:
            return []
        holders = [n for n, body in self.file_envs.items() if SECRET_FIELDS & body.keys()]
        try:
            mode = self.path.stat().st_mode
        except OSError:
            return []
        if holders and mode & 0o077:
            return [
                f"{self.path} holds secrets ({', '.join(holders)}) and is readable by others "
                f"(mode {mode & 0o777:o}): run 'chmod 600 {self.path}', or use aws_profile instead"
            ]
        return []

    def names(self) -> list[str]:
        return [info.name for info in self.environments()]

    # ------------------------------------------------------------------ resolving
    def get_config(self, name: str = "default", **overrides: Any) -> SandboxConfig:
        """The effective configuration of environment ``name``; keyword arguments are the strongest layer."""
        return self.resolve(name, overrides).config

    def resolve(self, name: str = "default", overrides: Mapping[str, Any] | None = None) -> ResolvedConfig:
        """Like :meth:`get_config`, also telling where each value came from."""
        layers = self._chain(name, [])
        problems: list[str] = []
        layers.append(self._env_layer(name, problems))
        if overrides:
            layers.append(_Layer(_protect(dict(overrides), self.registry), ARGUMENT_SOURCE))
        merged: dict[str, Any] = {}
        sources: dict[str, str] = dict.fromkeys(fields(self.registry), DEFAULT_SOURCE)
        texts: dict[str, str] = {}
        for layer in layers:
            for key, value in layer.values.items():
                merged[key] = value
                sources[key] = layer.source_of(key)
                if key in layer.texts:
                    texts[key] = layer.texts[key]
                else:
                    texts.pop(key, None)
        extends = merged.pop("extends", None)
        sources.pop("extends", None)
        if extends is not None and not isinstance(extends, str):
            problems.append(f"{name}.extends: {extends!r} is not the name of an environment or preset")
        context = {
            "registered_runtimes": self.registered_runtimes,
            "registered_transports": self.registered_transports,
            "registry": self.registry,
            "strict": True,  # the options models' validation too
        }
        config = None
        cross = _cross_checks(name, merged, sources)
        try:
            # Strict: a file's values keep their JSON types (true is no number, "yes" no boolean); text from
            # variables and --set was parsed by from_text() already.
            config = SandboxConfig.model_validate(merged, context=context, strict=True)
        except ValidationError as exc:
            errors = exc.errors()
            if cross:  # they say what the model's whole-config checks say, naming the field to fix
                errors = [err for err in errors if err.get("loc")]
            problems += [_describe(name, err, merged, sources, texts, self.registry) for err in errors]
        problems += cross
        policy = merged.get("cleanup_policy")
        if isinstance(policy, str) and policy not in self.registered_policies:
            problems.append(
                f"{name}.cleanup_policy: {policy!r} is not a registered cleanup policy"
                f"{_origin(sources.get('cleanup_policy'))}; registered (built-ins and plugins): "
                f"{', '.join(sorted(self.registered_policies))}"
            )
        if problems:
            raise InvalidConfigError(problems)
        assert config is not None
        for key in merged:
            log.debug("environment %s: %s = %r (%s)", name, key, mask(key, merged[key]), sources[key])
        return ResolvedConfig(name, config, sources, self.registry.option_fields())

    def validate(self, names: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Problems of each environment (all when ``names`` is None); an empty list means valid. Beyond
        what :meth:`resolve` checks, an instance must have a region (here or in the AWS config files)."""
        report: dict[str, list[str]] = {}
        for name in self.names() if names is None else names:
            try:
                region = _region_problem(self.resolve(name))
                report[name] = [region] if region else []
            except InvalidConfigError as exc:
                report[name] = list(exc.problems)
            except ConfigError as exc:
                report[name] = [str(exc)]
        return report

    def _unknown(self, name: str, chain: list[str]) -> ConfigError:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        what = f"{chain[-1]}.extends: " if chain else ""
        place = f"in {self.path} or " if self.path else ""
        return ConfigError(
            f"{what}no environment named {name!r} {place}among the presets{hint} (known: {', '.join(known)})"
        )

    def _chain(self, name: str, chain: list[str], *, preset_only: bool = False) -> list[_Layer]:
        """The layers of ``name``, weakest first, following ``extends``; ``chain`` is the path so far."""
        in_file = name in self.file_envs and not preset_only
        key = f"{name} (preset)" if not in_file else name
        if key in chain:
            raise ConfigError(f"extends cycle: {' -> '.join([*chain, key])}")
        if in_file:
            body = self.file_envs[name]
            source = f"file {self.path} [{name}]"
        elif name in self.presets:
            body = self.presets[name]
            source = f"preset {name}"
        else:
            raise self._unknown(name, chain)
        parent = body.get("extends")
        if parent is None:
            base = (
                self._chain(name, [*chain, key], preset_only=True) if in_file and name in self.presets else []
            )
        elif not isinstance(parent, str):
            base = []  # reported by resolve()
        elif parent == name:
            if not in_file or name not in self.presets:
                raise ConfigError(f"extends cycle: {name} extends itself and there is no preset {name!r}")
            base = self._chain(name, [*chain, key], preset_only=True)
        else:
            base = self._chain(parent, [*chain, key], preset_only=not in_file)
        values = {k: v for k, v in body.items() if not (k == "extends" and isinstance(v, str))}
        return [*base, _Layer(values, source)]

    def _env_layer(self, name: str, problems: list[str]) -> _Layer:
        """Override variables as one layer; each value's source names its variable."""
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        known = fields(self.registry)
        pairs = [*ENV_ALIASES, *((env_var_for(f), f) for f in known)]
        for var, fname in pairs:
            raw = self.environ.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[fname] = from_text(fname, raw, self.registry)
            except ValueError as exc:
                problems.append(f"{name}.{fname}: {raw!r} {exc} (from variable {var})")
                continue
            origin[fname] = var
        for var in self.environ:
            if var.startswith(ENV_PREFIX) and var not in OTHER_PREFIXED_VARS:
                fname = var[len(ENV_PREFIX) :].lower()
                if fname not in known:
                    close = difflib.get_close_matches(fname, known, n=1, cutoff=0.75)
                    if close:
                        log.warning(
                            "variable %s is not a setting (ignored); did you mean %s?",
                            var,
                            env_var_for(close[0]),
                        )
        return _Layer(
            _protect(values, self.registry),
            "variables",
            {f: f"variable {v}" for f, v in origin.items()},
            {f: self.environ[v] for f, v in origin.items()},
        )


def _cross_checks(env: str, merged: Mapping[str, Any], sources: Mapping[str, str]) -> list[str]:
    """Rules between fields, worded with the field to fix."""
    problems = []
    key_id, secret, token = (merged.get(k) for k in ("access_key_id", "secret_access_key", "session_token"))
    if bool(key_id) != bool(secret):
        given, missing = (
            ("access_key_id", "secret_access_key") if key_id else ("secret_access_key", "access_key_id")
        )
        problems.append(
            f"{env}.{missing}: is missing while {given} is set{_origin(sources.get(given))}; the two go "
            "together: give both, or neither to use aws_profile or the default credential chain"
        )
    elif token and not key_id:
        problems.append(
            f"{env}.session_token: is set{_origin(sources.get('session_token'))} without access_key_id and "
            "secret_access_key; temporary credentials need all three"
        )
    transport = merged.get("transport")
    needs = {"ssm": "instance_id", "eic": "instance_id", "ssh": "ssh_host"}.get(str(transport))
    if needs and not merged.get(needs):
        problems.append(
            f"{env}.{needs}: is required when transport is {transport!r}"
            f"{_origin(sources.get('transport'))}; set it, or use transport 'auto' to run locally"
        )
    return problems


def _region_problem(resolved: ResolvedConfig) -> str | None:
    """An instance that AWS cannot be asked about for want of a region. Checked by validate() only: where
    boto3 finds a region depends on this machine's AWS files, not on the configuration alone."""
    config, sources = resolved.config, resolved.sources
    if not config.instance_id or config.resolved_transport not in ("ssm", "eic") or config.region:
        return None
    if _aws_config_region(config.aws_profile):
        return None
    return (
        f"{resolved.name}.region: is needed to reach instance {config.instance_id!r}"
        f"{_origin(sources.get('instance_id'))} and is not set here, in AWS_REGION / AWS_DEFAULT_REGION, or "
        f"in the AWS config of profile {config.aws_profile or 'default'!r}; set it, e.g. "
        '"region": "us-east-1"'
    )


def _aws_config_region(profile: str | None) -> str | None:
    """The region boto3 would take from the AWS config files for ``profile`` (files only, no network)."""
    import botocore.exceptions
    import botocore.session

    try:
        return botocore.session.Session(profile=profile).get_config_variable("region")
    except botocore.exceptions.ProfileNotFound:
        return None  # the profile itself is reported when credentials are looked for


def _parse_list(raw: str) -> list[str]:
    text = raw.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not a JSON list ({exc.msg}); write a,b,c or a JSON list") from None
        if not isinstance(value, list):
            raise ValueError("is not a list; write a,b,c or a JSON list")
        return value
    return split_list(text)


def _origin(source: str | None) -> str:
    if not source or source == DEFAULT_SOURCE:
        return ""
    return f" (from {source})"


_RULES = {
    "greater_than_equal": "is below the minimum {ge}",
    "less_than_equal": "is above the maximum {le}",
    "greater_than": "must be greater than {gt}",
    "less_than": "must be less than {lt}",
    "int_parsing": "is not a whole number",
    "int_type": "is not a whole number",
    "int_from_float": "is not a whole number",
    "bool_parsing": "is not true or false",
    "bool_type": "is not true or false",
    "string_type": "is not a string",
    "list_type": "is not a list",
    "literal_error": "is not one of {expected}",
    "missing": "is required",
    "too_short": "is too short",
}


def _describe(
    env: str,
    err: Mapping[str, Any],
    merged: Mapping[str, Any],
    sources: Mapping[str, str],
    texts: Mapping[str, str],
    registry: Registry,
) -> str:
    """One pydantic error as ``env.field: value rule (from source)``; secrets and unknown values hidden;
    a value given as text (``texts``) quoted as written; a transport's option names its transport and
    plugin."""
    loc = err.get("loc") or ()
    kind = err.get("type", "")
    if not loc:
        message = str((err.get("ctx") or {}).get("error", err.get("msg", "")))
        return f"{env}: {message}"
    fname = str(loc[0])
    where = f"{env}.{fname}" + "".join(f"[{i}]" for i in loc[1:])
    source = _origin(sources.get(fname))
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(fname, fields(registry), n=1)
        if close:
            owner = option_owner(close[0], registry)
            hint = f"; did you mean {close[0]!r}" + (f" ({owner.owner()})?" if owner else "?")
        else:
            hint = (
                "; see CONFIG_GUIDE.md for the fields ('ec2-sandbox plugins' lists the transports whose "
                "plugins add options)"
            )
        return f"{where}: is not a known field{source}{hint}"
    ctx = err.get("ctx") or {}
    if kind == "value_error":
        rule = str(ctx.get("error", err.get("msg", "")))
    elif kind == "int_type" and isinstance(err.get("input"), bool):
        rule = "is a boolean, not a whole number"
    elif kind in _RULES:
        rule = _RULES[kind].format(**{k: v for k, v in ctx.items()})
    else:
        rule = str(err.get("msg", "is invalid"))
    value = MASK if is_secret(fname, registry) else texts.get(fname, err.get("input", merged.get(fname)))
    owner = option_owner(fname, registry)
    of = f" ({owner.owner()})" if owner is not None else ""
    return f"{where}: {value!r} {rule}{of}{source}"
