"""CONFIG_GUIDE.md tells the truth: every field, every override variable, and the presets' real values."""

from __future__ import annotations

import re
from pathlib import Path

from ec2_sandbox.config_manager import ENV_ALIASES, PRESET_NAMES, ConfigManager, field_info, fields

GUIDE = (Path(__file__).resolve().parents[1] / "CONFIG_GUIDE.md").read_text()


def table_after(heading: str) -> list[list[str]]:
    section = GUIDE.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without header and separator


def test_every_field_is_documented_with_its_default_and_range() -> None:
    """The core's fields and the built-in transports' options (ssh_*, eic_*, s3_bucket) alike."""
    rows = {row[0].strip("`"): row for row in table_after("## 3. Every field")}
    assert set(rows) == set(fields())
    for name in fields():
        info = field_info(name)
        assert info is not None
        default = info.default
        if isinstance(default, bool):
            assert rows[name][2] == str(default).lower(), name
        elif isinstance(default, int | str):
            assert rows[name][2].strip("`") == str(default), name
        for meta in info.metadata:
            bound = getattr(meta, "ge", None) or getattr(meta, "le", None)
            if bound is not None:
                assert str(bound) in rows[name][3], (name, bound)


def test_preset_table_matches_the_presets() -> None:
    rows = table_after("## 4. The presets")
    assert [row[0].strip("`") for row in rows] == list(PRESET_NAMES)
    manager = ConfigManager(environ={})
    for row in rows:
        config = manager.get_config(row[0].strip("`"))
        numbers = [int(cell) for cell in row[1:9]]
        assert numbers == [
            config.max_execution_time,
            config.max_memory_mb,
            config.cleanup_after_hours,
            config.max_processes,
            config.max_file_size_mb,
            config.max_open_files,
            config.max_disk_mb,
            config.max_output_chars,
        ], row[0]
        assert row[9].strip("*").startswith("on") == config.network
        listed = re.findall(r"[a-z0-9]+", row[10].replace("(first)", ""))
        if config.allowed_runtimes is None:
            assert row[10] == "all registered"
        else:
            assert listed == config.allowed_runtimes


def test_override_variables_are_documented() -> None:
    section = GUIDE.split("## 5. Environment variables", 1)[1].split("## 6.", 1)[0]
    for var, field in ENV_ALIASES:
        assert f"`{var}`" in section and f"`{field}`" in section
    assert "EC2_SANDBOX_<FIELD>" in section
