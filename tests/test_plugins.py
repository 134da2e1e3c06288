"""Plugin loading: discovery through real entry points, the broken-plugin cases, conflicts, selection.

Fixture plugins (``tests/plugin_fixtures``) are installed by writing ``*.dist-info`` dirs with an
``entry_points.txt`` into a temp dir on ``sys.path``: ``importlib.metadata`` finds them exactly as it finds
a pip-installed plugin. Each test loads its own :class:`Registry`; the process-wide one is left alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from plugin_fixtures import PLUGINS, install

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.plugins import BUILTINS, Registry, get_registry, load_registry
from ec2_sandbox.runtimes import BUILTIN_RUNTIMES

BUILTIN_NAMES = {r.name for r in BUILTIN_RUNTIMES}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Install fixture plugins: ``site(["good", "raises"])`` (or ``site()`` for all); returns the dir."""
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    # A SandboxConfig built in code validates against the process's registry: load it now, without the
    # fixtures, so that no test leaves them in it for the tests that run after it in this process.
    get_registry()

    def installer(names: list[str] | None = None) -> Path:
        path = install(tmp_path / "site", names)
        monkeypatch.syspath_prepend(str(path))
        return path

    return installer


def errors_about(registry: Registry, plugin: str) -> list[str]:
    return [e for e in registry.errors if repr(plugin) in e]


# ---------------------------------------------------------------------- the real first-party plugins
def test_first_party_plugins_load_through_their_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    registry = load_registry()
    assert registry.errors == []
    perl = registry.plugin("perl")
    assert perl is not None and not perl.builtin
    assert perl.dist == "ec2-sandbox-perl" and perl.version == "0.1.0"
    assert perl.value == "ec2_sandbox_perl"
    assert perl.hooks == ["register_runtimes"] and perl.registered == ["runtime:perl"]
    keep = registry.plugin("keep-newest")
    assert keep is not None and keep.registered == ["cleanup_policy:keep-newest"]
    assert registry.owners["runtime:perl"] == "perl"
    assert registry.owners["runtime:python3"] == BUILTINS
    assert set(registry.runtimes) >= BUILTIN_NAMES | {"perl"}
    assert {"age", "keep-newest"} <= set(registry.cleanup_policies)
    # built-ins come first, plugins after them in entry-point name order
    names = [p.name for p in registry.plugins]
    assert names[0] == BUILTINS
    assert names[1:] == sorted(names[1:])


def test_a_good_plugin_registers_each_kind(site) -> None:  # type: ignore[no-untyped-def]
    site(["good"])
    registry = load_registry()
    assert registry.errors == []
    info = registry.plugin("good")
    assert info is not None
    assert (info.version, info.dist, info.value) == ("1.2.3", "ec2sb-fixture-good", "plugin_fixtures.good")
    assert info.hooks == ["register_runtimes", "register_transports", "register_cleanup_policies"]
    assert info.registered == [
        "runtime:fixture-sh",
        "transport:fixture-local",
        "cleanup_policy:fixture-nothing",
    ]
    assert registry.runtimes["fixture-sh"].filename == "prog.sh"
    assert registry.cleanup_policies["fixture-nothing"].needs_sizes is True


async def test_a_plugin_transport_is_used_by_the_sandbox(site, tmp_base_dir: str) -> None:  # type: ignore[no-untyped-def]
    site(["good"])
    registry = load_registry()
    # SandboxConfig.transport only names the core's transports, so the factory is called directly here
    transport = registry.transports["fixture-local"](SandboxConfig(base_sandbox_dir=tmp_base_dir))
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir)
    async with AsyncSandbox(config, transport=transport, registry=registry) as sandbox:
        result = await sandbox.execute_code("echo from $0", runtime="fixture-sh")
    assert result.success, result
    assert result.stdout.startswith("from ") and result.stdout.rstrip().endswith("prog.sh")


# ---------------------------------------------------------------------- broken plugins
def test_import_error_is_reported_and_the_rest_loads(site) -> None:  # type: ignore[no-untyped-def]
    site(["import-error", "good"])
    registry = load_registry()
    (error,) = registry.errors
    assert "plugin 'import-error' failed to import (plugin_fixtures.import_error)" in error
    assert "ModuleNotFoundError" in error and "ec2_sandbox_fixture_dependency_that_is_not_installed" in error
    assert registry.plugin("import-error") is None
    assert "fixture-sh" in registry.runtimes and "perl" in registry.runtimes
    assert set(registry.runtimes) >= BUILTIN_NAMES


def test_sys_exit_in_a_plugin_does_not_end_the_program(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    site(["exits", "good"])
    registry = load_registry()
    (error,) = registry.errors
    assert error.startswith("plugin 'exits' raised in register_runtimes: SystemExit: 3")
    assert "fixture-sh" in registry.runtimes
    monkeypatch.setenv("EC2SB_FIXTURE_EXIT_AT_IMPORT", "1")
    monkeypatch.delitem(sys.modules, "plugin_fixtures.exits")
    registry = load_registry()
    (error,) = registry.errors
    assert (
        "plugin 'exits' failed to import (plugin_fixtures.exits): SystemExit: exits: refusing to load"
        in error
    )
    assert "fixture-sh" in registry.runtimes


def test_a_raising_hook_drops_only_that_hook_calls_registrations(site) -> None:  # type: ignore[no-untyped-def]
    site(["raises", "good"])
    registry = load_registry()
    (error,) = registry.errors
    assert error.startswith("plugin 'raises' raised in register_runtimes: RuntimeError: cannot find")
    assert "dropped what it registered (half-registered)" in error
    assert "half-registered" not in registry.runtimes
    # the same plugin's other hook, and the other plugins, are unaffected
    assert "fixture-keep-all" in registry.cleanup_policies
    info = registry.plugin("raises")
    assert info is not None and info.registered == ["cleanup_policy:fixture-keep-all"]
    assert {"fixture-sh", "perl"} <= set(registry.runtimes)


def test_malformed_registrations_are_reported_one_by_one(site) -> None:  # type: ignore[no-untyped-def]
    site(["malformed"])
    registry = load_registry()
    errors = errors_about(registry, "malformed")
    assert len(errors) == 4, errors
    assert all("registered something malformed in" in e for e in errors)
    runtimes_errors = [e for e in errors if "in register_runtimes" in e]
    assert any("expects an ec2_sandbox.Runtime, got str" in e for e in runtimes_errors)
    assert any("invalid runtime 'Bad Name!'" in e and "name:" in e for e in runtimes_errors)
    assert any("in register_transports" in e and "(int, NoneType)" in e for e in errors)
    assert any("in register_cleanup_policies" in e and "no select(" in e for e in errors)
    # the valid dict-form runtime of the same plugin is kept
    assert registry.runtimes["fixture-dict"].version_argv == ["sh", "-c", "echo dict 2"]
    assert registry.plugin("malformed").registered == ["runtime:fixture-dict"]  # type: ignore[union-attr]
    assert "ruby" not in registry.runtimes and 42 not in registry.transports


def test_unknown_hook_skips_the_plugin(site) -> None:  # type: ignore[no-untyped-def]
    site(["unknown-hook", "good"])
    registry = load_registry()
    (error,) = registry.errors
    assert "plugin 'unknown-hook' implements unknown hook(s) register_runtime;" in error
    assert "known hooks: register_runtimes, register_transports, register_cleanup_policies" in error
    assert registry.plugin("unknown-hook") is None
    assert "never" not in registry.runtimes
    assert "fixture-sh" in registry.runtimes


def test_a_plugin_without_hookimpl_markers_is_an_error(site) -> None:  # type: ignore[no-untyped-def]
    site(["no-hooks"])
    registry = load_registry()
    (error,) = registry.errors
    assert "plugin 'no-hooks' implements no hooks: mark its functions with ec2_sandbox.hookimpl" in error
    assert registry.plugin("no-hooks") is None


def test_a_bad_hook_signature_is_an_error(site) -> None:  # type: ignore[no-untyped-def]
    site(["bad-signature"])
    registry = load_registry()
    (error,) = registry.errors
    assert error.startswith("plugin 'bad-signature' could not be registered: PluginValidationError")
    assert "register_runtimes" in error and "registry" in error
    assert registry.plugin("bad-signature") is None


def test_returning_instead_of_registering_is_an_error(site) -> None:  # type: ignore[no-untyped-def]
    site(["returns"])
    registry = load_registry()
    (error,) = registry.errors
    assert "plugin 'returns' returned list from register_runtimes, which is ignored" in error
    assert "returned" not in registry.runtimes


def test_all_broken_plugins_at_once_leave_the_core_and_good_plugins_working(site) -> None:  # type: ignore[no-untyped-def]
    site()
    registry = load_registry()
    broken = {
        "import-error",
        "raises",
        "malformed",
        "unknown-hook",
        "no-hooks",
        "bad-signature",
        "returns",
        "exits",
    }
    for name in broken:
        assert errors_about(registry, name), name
    for error in registry.errors:  # every error names a plugin
        assert any(repr(name) in error for name in PLUGINS), error
    assert BUILTIN_NAMES | {"perl", "fixture-dict", "zz-only"} <= set(registry.runtimes)
    assert {"age", "keep-newest", "fixture-nothing"} <= set(registry.cleanup_policies)
    assert registry.transports["local"].__module__ == "ec2_sandbox.transports.local"


async def test_the_core_runs_code_with_broken_plugins_installed(site, tmp_base_dir: str) -> None:  # type: ignore[no-untyped-def]
    site()
    registry = load_registry()
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir)
    async with AsyncSandbox(config, registry=registry) as sandbox:
        py = await sandbox.execute_code("print(6 * 7)")
        pl = await sandbox.execute_code('print 6 * 7, "\\n";', runtime="perl")
    assert (py.stdout, pl.stdout) == ("42\n", "42\n")


# ---------------------------------------------------------------------- conflicts
def test_conflict_keeps_the_first_registration_and_names_both(site) -> None:  # type: ignore[no-untyped-def]
    site(["good", "zz-conflict"])
    registry = load_registry()
    conflicts = [e for e in registry.errors if e.startswith("conflict:")]
    assert len(conflicts) == 4, registry.errors
    assert (
        "conflict: plugin 'zz-conflict' registers runtime 'python3' in register_runtimes, but plugin "
        f"{BUILTINS!r} registered it first; keeping {BUILTINS!r}'s"
    ) in conflicts
    assert any("runtime 'perl'" in e and "plugin 'perl' registered it first" in e for e in conflicts)
    assert any("runtime 'fixture-sh'" in e and "plugin 'good' registered it first" in e for e in conflicts)
    assert any("transport 'local'" in e and repr(BUILTINS) in e for e in conflicts)
    # no plugin replaces a built-in or an earlier plugin; its unique name is kept
    assert registry.runtimes["python3"].argv == ["python3", "{file}"]
    assert registry.runtimes["perl"].argv == ["perl", "{file}"]
    assert registry.runtimes["fixture-sh"].filename == "prog.sh"
    assert registry.owners["runtime:zz-only"] == "zz-conflict"
    assert registry.plugin("zz-conflict").registered == ["runtime:zz-only"]  # type: ignore[union-attr]


def test_conflict_precedence_is_entry_point_name_order_not_install_order(site) -> None:  # type: ignore[no-untyped-def]
    site(["good", "aa-first"])  # installed second, but 'aa-first' sorts before 'good'
    registry = load_registry()
    (error,) = registry.errors
    assert "plugin 'good' registers runtime 'fixture-sh'" in error
    assert "plugin 'aa-first' registered it first" in error
    assert registry.runtimes["fixture-sh"].filename == "first.sh"
    assert registry.owners["runtime:fixture-sh"] == "aa-first"


def test_two_distributions_with_one_entry_point_name(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    install(tmp_path / "a", ["good"])
    other = tmp_path / "b" / "ec2sb_fixture_other-2.0.dist-info"
    other.mkdir(parents=True)
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: ec2sb-fixture-other\nVersion: 2.0\n")
    (other / "entry_points.txt").write_text("[ec2_sandbox]\ngood = plugin_fixtures.aa_first\n")
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    registry = load_registry()
    (error,) = registry.errors
    assert "plugin 'good': two installed distributions use this entry-point name" in error
    assert "keeping ec2sb-fixture-good's" in error
    assert registry.plugin("good").version == "1.2.3"  # type: ignore[union-attr]


# ---------------------------------------------------------------------- EC2_SANDBOX_PLUGINS
def test_selection_unset_loads_all(site) -> None:  # type: ignore[no-untyped-def]
    site(["good"])
    registry = load_registry()
    assert {"good", "perl", "keep-newest"} <= {p.name for p in registry.plugins}
    assert registry.disabled == []


def test_selection_empty_loads_none(site, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    site()
    monkeypatch.setenv("EC2_SANDBOX_PLUGINS", "")
    registry = load_registry()
    assert [p.name for p in registry.plugins] == [BUILTINS]
    assert registry.errors == []  # the broken plugins were never imported
    assert set(registry.runtimes) == BUILTIN_NAMES
    assert set(registry.cleanup_policies) == {"age"}
    assert {"good", "perl", "keep-newest", "import-error"} <= set(registry.disabled)


def test_selection_list_by_entry_point_or_distribution_name(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    site()
    monkeypatch.setenv("EC2_SANDBOX_PLUGINS", " perl , ec2sb-fixture-good ,")
    registry = load_registry()
    assert [p.name for p in registry.plugins] == [BUILTINS, "good", "perl"]
    assert registry.errors == []
    assert "keep-newest" in registry.disabled and "import-error" in registry.disabled
    assert set(registry.runtimes) == BUILTIN_NAMES | {"perl", "fixture-sh"}


def test_selection_naming_a_missing_plugin_is_an_error(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    site(["good"])
    monkeypatch.setenv("EC2_SANDBOX_PLUGINS", "good,no-such-plugin")
    registry = load_registry()
    (error,) = registry.errors
    assert "EC2_SANDBOX_PLUGINS names plugin 'no-such-plugin', which is not installed" in error
    assert [p.name for p in registry.plugins] == [BUILTINS, "good"]


def test_selection_can_load_a_broken_plugin_alone(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    site()
    monkeypatch.setenv("EC2_SANDBOX_PLUGINS", "raises")
    registry = load_registry()
    (error,) = registry.errors
    assert "plugin 'raises' raised in register_runtimes" in error
    assert set(registry.runtimes) == BUILTIN_NAMES


# ---------------------------------------------------------------------- names a plugin author relies on
REPO = Path(__file__).resolve().parents[1]


def test_every_logger_is_named_after_its_module() -> None:
    """``logging.getLogger(__name__)`` everywhere, so ``ec2_sandbox`` (or ``ec2_sandbox.transports``, or a
    plugin's package) can be configured as one tree; other libraries' loggers are only ever quietened."""
    import re

    sources = [p for top in ("core", "adapters", "plugins") for p in (REPO / top).rglob("src/**/*.py")]
    assert len(sources) > 30
    named = re.compile(r"getLogger\((?!__name__\))([^)]*)\)")
    found = {
        str(p.relative_to(REPO)): m.group(1)
        for p in sources
        for m in named.finditer(p.read_text())
        if not m.group(1).startswith('"werkzeug"')
    }
    assert found == {}


def test_the_original_tools_class_name_is_a_deprecated_alias() -> None:
    import ec2_sandbox

    with pytest.warns(DeprecationWarning, match=r"use ec2_sandbox.Sandbox \(the same class\)"):
        alias = ec2_sandbox.EC2SandboxTool
    assert alias is ec2_sandbox.Sandbox
    assert "EC2SandboxTool" not in ec2_sandbox.__all__
    with pytest.raises(AttributeError):
        ec2_sandbox.NoSuchName  # noqa: B018


@pytest.mark.parametrize("transport", ["ssh", "eic"])
def test_an_ssh_transport_without_its_extra_says_what_to_install(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ec2_sandbox import default_plugins
    from ec2_sandbox.errors import ConfigError

    monkeypatch.setitem(sys.modules, "asyncssh", None)  # as if the extra 'ssh' were not installed
    for module in ("ec2_sandbox.transports.ssh", "ec2_sandbox.transports.eic"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    create = getattr(default_plugins, f"create_{transport}_transport")
    with pytest.raises(ConfigError) as caught:
        create(SandboxConfig())
    assert str(caught.value) == (
        f"transport {transport!r} needs the optional SSH dependencies (asyncssh is missing): "
        "pip install 'ec2-sandbox[ssh]'"
    )
    assert caught.value.__suppress_context__
