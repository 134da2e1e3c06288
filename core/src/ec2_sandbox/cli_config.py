"""``ec2-sandbox config``: list, validate, show, auth and template.

Exit statuses: 0 when all is well; 1 when ``validate`` finds a problem or ``auth --check`` fails;
:data:`~ec2_sandbox.cli.EXIT_FAILED` for a configuration that cannot be used (unknown environment, missing
file, broken JSON, invalid values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import cli
from .config import SandboxConfig
from .config_manager import (
    CONFIG_ENV_VAR,
    MASK,
    ConfigManager,
    InvalidConfigError,
    ResolvedConfig,
    from_text,
    mask,
    scrub,
)
from .errors import ConfigError
from .hookspecs import Subparsers
from .plugins import BUILTINS


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "config",
        help="list, validate and show environments; check credentials; write a template",
        description=(
            "Environments come from the presets shipped with ec2-sandbox and from a JSON configuration file "
            f"(--config, else ${CONFIG_ENV_VAR}, else ./config.json if present). Values are layered: preset "
            "< file < environment variables < arguments. See CONFIG_GUIDE.md."
        ),
    )

    def show_help(args: argparse.Namespace) -> int:
        p.print_help()
        return cli.EXIT_FAILED

    p.set_defaults(handler=show_help)
    commands = p.add_subparsers(dest="config_command", metavar="ACTION")

    c = commands.add_parser("list", help="environments: name, source, transport, instance", description="")
    c.add_argument("--json", action="store_true", help="print as JSON")
    c.set_defaults(handler=cmd_list)

    c = commands.add_parser(
        "validate",
        help="check environments (all when none is named); exit status 1 on any problem",
    )
    c.add_argument("names", nargs="*", metavar="ENV", help="environments to check (default: all)")
    c.add_argument("--json", action="store_true", help="print {environment: [problems]} as JSON")
    c.set_defaults(handler=cmd_validate)

    c = commands.add_parser(
        "show",
        help="effective values of an environment and where each came from",
        description="Secrets are never printed: they show as ****.",
    )
    c.add_argument("name", nargs="?", metavar="ENV", help="environment (default: -E or 'default')")
    c.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an explicit value, strongest of all layers (repeatable)",
    )
    c.add_argument(
        "--json",
        action="store_true",
        help='print {"environment": NAME, "fields": {FIELD: {"value": ..., "source": ...}}} as JSON',
    )
    c.set_defaults(handler=cmd_show)

    c = commands.add_parser(
        "auth",
        help="which AWS credentials an environment uses; --check asks STS who they are",
    )
    c.add_argument("name", nargs="?", metavar="ENV", help="environment (default: -E or 'default')")
    c.add_argument(
        "--check", action="store_true", help="call STS GetCallerIdentity and print account and ARN"
    )
    c.set_defaults(handler=cmd_auth)

    c = commands.add_parser("template", help="write a commented starting configuration that validates")
    c.add_argument("-o", "--output", metavar="PATH", help="write to PATH (default: print)")
    c.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    c.set_defaults(handler=cmd_template)


def _print_table(rows: list[list[str]]) -> None:
    """Columns aligned; a row of one cell is a heading, printed as it is and left out of the widths."""
    cells = [row for row in rows if len(row) > 1]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in rows:
        if len(row) == 1:
            print(row[0])
        else:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    manager = ConfigManager(args.config)
    entries = []
    for info in manager.environments():
        try:
            config = manager.get_config(info.name)
            transport, instance = config.resolved_transport, config.instance_id or "-"
        except ConfigError:
            transport, instance = "INVALID (see 'config validate')", "-"
        entries.append(
            {"name": info.name, "source": info.source, "transport": transport, "instance": instance}
        )
    if args.json:
        cli.print_json(entries)
        return 0
    rows = [["NAME", "SOURCE", "TRANSPORT", "INSTANCE"]]
    rows += [[e["name"], e["source"], e["transport"], e["instance"]] for e in entries]
    _print_table(rows)
    return 0


# --------------------------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        manager = ConfigManager(args.config)
        report = manager.validate(args.names or None)
        for warning in manager.warnings():
            print(f"warning: {warning}", file=sys.stderr)
    except InvalidConfigError as exc:
        report = {"(file)": exc.problems}
    except ConfigError as exc:
        report = {"(file)": [str(exc)]}
    if args.json:
        cli.print_json(report)
    else:
        for name, problems in report.items():
            if problems:
                print(f"{name}: INVALID")
                for problem in problems:
                    print(f"  - {problem}")
            else:
                print(f"{name}: ok")
    bad = sum(1 for problems in report.values() if problems)
    if bad:
        print(f"{bad} of {len(report)} environment(s) invalid", file=sys.stderr)
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------- show


def _parse_sets(items: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
        key = key.strip()
        try:
            out[key] = from_text(key, value)
        except ValueError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
    return out


def _resolve(args: argparse.Namespace, sets: Iterable[str] = ()) -> ResolvedConfig:
    """The environment named on the command line (else -E, else 'default'), --set values strongest."""
    # The file is read before the --set values are parsed: a missing file is the error reported first.
    manager = ConfigManager(args.config)
    return manager.resolve(args.name or cli.environment_name(args), _parse_sets(sets))


def cmd_show(args: argparse.Namespace) -> int:
    """The core's fields, then each transport's options under a line naming the transport and plugin."""
    resolved = _resolve(args, args.sets)
    if args.json:
        data: dict[str, dict[str, Any]] = {}
        for name, value, source in resolved.rows():
            data[name] = {"value": value, "source": source}
            owner = resolved.options.get(name)
            if owner is not None:
                data[name]["option_of"] = {"transport": owner.transport, "plugin": owner.plugin}
        cli.print_json({"environment": resolved.name, "fields": data})
        return 0
    print(f"environment: {resolved.name}  (transport: {resolved.config.resolved_transport})")
    rows = [["FIELD", "VALUE", "SOURCE"]]
    heading = None
    for name, value, source in resolved.rows():
        owner = resolved.options.get(name)
        if owner is not None and owner.owner() != heading:
            heading = owner.owner()
            rows.append([f"# options of transport {owner.transport!r} ({_plugin(owner.plugin)})"])
        rows.append([name, _show(value, name), source])
    _print_table(rows)
    return 0


def _plugin(name: str) -> str:
    return "built in" if name == BUILTINS else f"plugin {name!r}"


def _show(value: Any, name: str = "") -> str:
    if value is None:
        return "all registered" if name == "allowed_runtimes" else "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------------------------- auth


def describe_auth(resolved: ResolvedConfig) -> list[str]:
    """Lines saying which credentials will be used and why (no secret in them)."""
    from .aws_session import auth_mode

    config, sources = resolved.config, resolved.sources
    mode = auth_mode(config)
    lines = [f"environment: {resolved.name}"]
    if mode in ("access_keys", "temporary_credentials"):
        what = "temporary credentials" if mode == "temporary_credentials" else "access keys"
        lines.append(
            f"method: {what} (access_key_id {mask('access_key_id', config.access_key_id)}, "
            f"from {sources.get('access_key_id')}; secret_access_key {MASK}"
            + (f"; session_token {MASK}" if mode == "temporary_credentials" else "")
            + ")"
        )
        if config.aws_profile:
            lines.append(
                f"note: aws_profile {config.aws_profile!r} ({sources.get('aws_profile')}) is ignored: "
                "access keys win over a profile"
            )
    elif mode == "profile":
        lines.append(f"method: profile {config.aws_profile!r} (from {sources.get('aws_profile')})")
        import botocore.session

        known = botocore.session.Session().available_profiles  # reads the AWS files only; no network
        if config.aws_profile not in known:
            lines.append(
                f"warning: profile {config.aws_profile!r} is not in the AWS config or credentials files "
                f"(known: {', '.join(sorted(known)) or 'none'}); 'aws configure --profile "
                f"{config.aws_profile}' creates it"
            )
    else:
        lines.append(
            "method: default credential chain (boto3 looks in order at: AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY variables, web identity, SSO and the shared config/credentials files, "
            "container credentials, then the EC2 instance role)"
        )
        seen = _chain_hints()
        if seen:
            lines.append(f"found here: {'; '.join(seen)}")
    lines.append(f"region: {config.region or '- (boto3 takes it from the profile or AWS config)'}")
    return lines


def _chain_hints() -> list[str]:
    """What of the default chain is visible without any network call."""
    env = os.environ
    hints = []
    if env.get("AWS_ACCESS_KEY_ID"):
        hints.append("AWS_ACCESS_KEY_ID in the environment")
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        hints.append("AWS_WEB_IDENTITY_TOKEN_FILE (web identity)")
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        hints.append("container credentials")
    credentials = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
    config = Path(env.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")
    for path in (credentials, config):
        if path.is_file():
            hints.append(f"{path}")
    return hints


def cmd_auth(args: argparse.Namespace) -> int:
    resolved = _resolve(args)
    for line in describe_auth(resolved):
        print(line)
    if not args.check:
        return 0
    return _check(resolved.config)


def _check(config: SandboxConfig) -> int:
    import botocore.exceptions

    from . import aws_session

    try:
        session = aws_session.make_session(config)
        credentials = session.get_credentials()
        if credentials is None:
            print("check: FAILED - no credentials found by the default chain", file=sys.stderr)
            return 1
        sts = session.client("sts", region_name=config.region or "us-east-1")
        identity = sts.get_caller_identity()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        message = scrub(f"{type(exc).__name__}: {exc}", config)
        print(f"check: FAILED - {message}", file=sys.stderr)
        return 1
    print("check: ok")
    print(f"account: {identity.get('Account')}")
    print(f"arn: {identity.get('Arn')}")
    print(f"user id: {identity.get('UserId')}")
    print(f"credentials from: {credentials.method}")
    return 0


# --------------------------------------------------------------------------------------------- template

TEMPLATE: dict[str, Any] = {
    "_comment": (
        "ec2-sandbox configuration. Top-level keys are environment names; keys starting with '_' are "
        "comments. An environment named like a preset (default, development, production, data-science, "
        "web-development, education) starts from that preset; 'extends' starts from another one. "
        "Check it with 'ec2-sandbox config validate'. Every field: CONFIG_GUIDE.md."
    ),
    "_auth": (
        "Credentials: set aws_profile, or access_key_id + secret_access_key (+ session_token for temporary "
        "keys), or none of them to use the default credential chain (instance role, SSO, environment)."
    ),
    "default": {
        "_comment": "Without instance_id code runs on this machine; set it to run on your instance over SSM.",
        "instance_id": None,
        "region": None,
        "aws_profile": None,
        "transport": "auto",
        "base_sandbox_dir": None,
        "max_execution_time": 300,
        "max_memory_mb": 1024,
        "max_processes": 64,
        "max_file_size_mb": 100,
        "max_open_files": 1024,
        "max_output_chars": 20000,
        "cleanup_after_hours": 24,
        "_allowed_runtimes": 'null allows every registered runtime; or list some: ["python3", "node"]',
        "allowed_runtimes": None,
        "network": False,
    },
    "production": {
        "_comment": "The production preset (900 s, 4096 MB, kept 48 h) on your instance.",
        "extends": "production",
        "instance_id": None,
        "region": None,
    },
}


def template_text() -> str:
    return json.dumps(TEMPLATE, indent=2) + "\n"


def cmd_template(args: argparse.Namespace) -> int:
    text = template_text()
    if not args.output:
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}; edit it, then run: ec2-sandbox --config {path} config validate", file=sys.stderr)
    return 0
