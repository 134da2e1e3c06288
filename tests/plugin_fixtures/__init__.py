"""Deliberately broken (and one good) plugins, installed for a test through real entry points.

:func:`install` writes one ``*.dist-info`` per plugin (``METADATA`` + ``entry_points.txt``) into a dir and
puts it on ``sys.path``, so the plugins are found by ``importlib.metadata`` exactly as installed ones are.
"""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent

#: entry-point name -> (distribution name, version, module under this package)
PLUGINS: dict[str, tuple[str, str, str]] = {
    "good": ("ec2sb-fixture-good", "1.2.3", "good"),
    "import-error": ("ec2sb-fixture-import-error", "0.0.1", "import_error"),
    "raises": ("ec2sb-fixture-raises", "0.0.2", "raises"),
    "malformed": ("ec2sb-fixture-malformed", "0.0.3", "malformed"),
    "unknown-hook": ("ec2sb-fixture-unknown-hook", "0.0.4", "unknown_hook"),
    "no-hooks": ("ec2sb-fixture-no-hooks", "0.0.5", "no_hooks"),
    "bad-signature": ("ec2sb-fixture-bad-signature", "0.0.6", "bad_signature"),
    "returns": ("ec2sb-fixture-returns", "0.0.7", "returns"),
    "zz-conflict": ("ec2sb-fixture-conflict", "0.0.8", "conflict"),
    "aa-first": ("ec2sb-fixture-aa-first", "0.0.9", "aa_first"),
    "exits": ("ec2sb-fixture-exits", "0.1.0", "exits"),
    "options": ("ec2sb-fixture-options", "0.2.0", "options"),
    "options-broken": ("ec2sb-fixture-options-broken", "0.2.1", "options_broken"),
    "commands": ("ec2sb-fixture-commands", "0.3.0", "commands"),
    "commands-raises": ("ec2sb-fixture-commands-raises", "0.3.1", "commands_raise"),
    "reentrant": ("ec2sb-fixture-reentrant", "0.4.0", "reentrant"),
}


def install(site: Path, names: list[str] | None = None) -> Path:
    """Write dist-infos for ``names`` (default: all) into ``site``; the caller puts ``site`` on sys.path."""
    site.mkdir(parents=True, exist_ok=True)
    for name in PLUGINS if names is None else names:
        dist, version, module = PLUGINS[name]
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[ec2_sandbox]\n{name} = plugin_fixtures.{module}\n")
    return site
