"""A plugin that calls sys.exit() at import and in its hook: neither may end the host program."""

import os
import sys

from ec2_sandbox import hookimpl

if os.environ.get("EC2SB_FIXTURE_EXIT_AT_IMPORT") == "1":
    sys.exit("exits: refusing to load")


@hookimpl
def register_runtimes(register):
    sys.exit(3)
