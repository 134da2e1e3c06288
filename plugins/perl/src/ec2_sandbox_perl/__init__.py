"""Perl 5 for ec2-sandbox, added through the public ``register_runtimes`` hook.

The target needs nothing but ``perl`` on its PATH (Debian, Ubuntu and Amazon Linux ship it; the package is
``perl``). The runner receives this runtime's description with every request.
"""

from __future__ import annotations

from ec2_sandbox import Runtime, hookimpl
from ec2_sandbox.hookspecs import RegisterRuntime

#: What Perl prints when malloc fails (``perldiag``): the bare panic, and the forms newer perls and
#: large single requests use. With RLIMIT_DATA in force, any of them means the memory limit was hit.
OOM_MARKERS = ["Out of memory!", "Out of memory in perl:", "Out of memory during"]

PERL = Runtime(
    name="perl",
    description="Perl 5 with its core modules: the target's system perl.",
    filename="main.pl",
    argv=["perl", "{file}"],
    # `perl -v` starts with a blank line and a paragraph; $^V is just "v5.36.0".
    version_argv=["perl", "-e", 'print "perl $^V\\n"'],
    # Perl allocates with malloc/brk/mmap and needs no large reservations: the data-segment rlimit caps
    # it exactly, and an allocation past it makes perl print "Out of memory!" and exit.
    rlimit_memory="data",
    oom_markers=OOM_MARKERS,
)


@hookimpl
def register_runtimes(register: RegisterRuntime) -> None:
    register(PERL)
