"""The in-process local transport passes file contents as bytes: no JSON, no base64, byte-exact."""

from __future__ import annotations

import base64
import hashlib
import os

from ec2_sandbox import AsyncSandbox, SandboxConfig, protocol, runner
from ec2_sandbox.transports.local import LocalTransport

#: Every byte value, then random bytes: large, binary and not valid UTF-8.
BLOB = bytes(range(256)) * 4 + os.urandom(20_000_000)


async def test_large_binary_input_and_output_pass_as_bytes_and_come_back_byte_exact(
    tmp_base_dir: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    written: list[type] = []
    real_write = runner.write_file_in

    def spy(root, name, data, owner=None):  # type: ignore[no-untyped-def]
        written.append(type(data))
        return real_write(root, name, data, owner)

    monkeypatch.setattr(runner, "write_file_in", spy)
    pages: list[dict] = []
    real_page_data = protocol.page_data
    monkeypatch.setattr(protocol, "page_data", lambda page: pages.append(page) or real_page_data(page))
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, max_file_size_mb=64)
    async with AsyncSandbox(config) as sandbox:
        code = (
            "import hashlib\ndata = open('in.bin', 'rb').read()\n"
            "open('out.bin', 'wb').write(data[::-1])\nprint(hashlib.sha256(data).hexdigest())"
        )
        result = await sandbox.execute_code(code, files={"in.bin": BLOB})
        assert result.success, result
        assert result.stdout.strip() == hashlib.sha256(BLOB).hexdigest()
        back = await sandbox.get_task_files(result.task_hash, "out.bin")
        part = await sandbox.read_task_file(result.task_hash, "out.bin", offset=1000, max_bytes=5000)
        nothing = await sandbox.read_task_file(result.task_hash, "out.bin", offset=1000, max_bytes=0)
    assert nothing.content == "" and nothing.size == len(BLOB)  # 0 bytes asked: none read
    assert back == BLOB[::-1]
    assert part.encoding == "base64" and base64.b64decode(part.content) == BLOB[::-1][1000:6000]
    assert written == [bytes]
    assert pages and all("raw" in page and "b64" not in page for page in pages)


async def test_the_subprocess_runner_still_speaks_base64(tmp_base_dir: str) -> None:
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, max_file_size_mb=64)
    blob = BLOB[:3_000_000]
    async with AsyncSandbox(config, transport=LocalTransport("subprocess")) as sandbox:
        result = await sandbox.execute_code(
            "open('out.bin', 'wb').write(open('in.bin', 'rb').read())", files={"in.bin": blob}
        )
        assert result.success, result
        assert await sandbox.get_task_files(result.task_hash, "out.bin") == blob
