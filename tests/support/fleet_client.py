"""A separate client process of a fleet: ``python fleet_client.py CONFIG_JSON < runs.json``.

Reads a JSON list of ``{"session": id|null, "code": text}`` from stdin, runs each through its own
``Sandbox`` (own boto3 session, own caches: nothing shared with the test but AWS), and prints a JSON list of
``{"success", "stdout", "error"}``.
"""

from __future__ import annotations

import json
import sys

from ec2_sandbox import Sandbox, SandboxConfig


def main() -> int:
    config = SandboxConfig.model_validate_json(sys.argv[1])
    runs = json.load(sys.stdin)
    out = []
    with Sandbox(config) as sandbox:
        for run in runs:
            result = sandbox.execute_code(run["code"], session_id=run["session"])
            out.append({"success": result.success, "stdout": result.stdout, "error": result.error_message})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
