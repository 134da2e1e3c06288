#!/bin/bash
# ec2-sandbox instance setup.
#
# Runs as EC2 user-data on a new instance (create_ec2_sandbox.sh embeds this file) and over SSM on an
# existing one (`ec2-sandbox prepare-instance`). Idempotent: every step checks before it changes anything and
# prints one line per step:   ec2-sandbox-setup: <step>: <ok|changed|skipped|failed>: <detail>
#
# What it puts in place (docs/manual-setup.md explains each item):
#   packages   python3, nodejs, bubblewrap, ec2-instance-connect, iptables (apt on Ubuntu, dnf on Amazon Linux)
#   userns     an AppArmor profile that lets bubblewrap create user namespaces (Ubuntu 23.10+ restricts them)
#   uid-range  uids 200000-265535 reserved for sandboxed code (/etc/subuid, /etc/subgid; no passwd entries)
#   dirs       /var/lib/ec2-sandbox root-owned 0711, /etc/ec2-sandbox, /usr/local/lib/ec2-sandbox
#   firewall   sandbox uids may not reach the instance metadata service (169.254.169.254, fd00:ec2::254);
#              re-applied at every boot by ec2-sandbox-imds-guard.service, which then writes the marker
#              /etc/ec2-sandbox/imds-blocked that the runner reports as "imds_guard"
#   cleanup    ec2-sandbox-cleanup.timer: hourly removal of task/session dirs older than CLEANUP_HOURS
#              (/etc/ec2-sandbox/cleanup.conf, default 24)
#
# Testing: with SANDBOX_ROOT=/some/dir every file is written below that directory instead of /, and package
# installs, systemctl, apparmor_parser and iptables calls are appended to $SANDBOX_ROOT/.system-commands
# instead of being run. A program counts as installed there when $SANDBOX_ROOT/usr/bin/<name> exists.
set -Eeuo pipefail
umask 022

ROOT="${SANDBOX_ROOT:-}"
ROOT="${ROOT%/}"
SETUP_VERSION=1
UID_FIRST=200000
UID_COUNT=65536
UID_LAST=$((UID_FIRST + UID_COUNT - 1))
BASE_DIR=/var/lib/ec2-sandbox
ETC_DIR=/etc/ec2-sandbox
LIB_DIR=/usr/local/lib/ec2-sandbox
UNIT_DIR=/etc/systemd/system
CLEANUP_HOURS="${EC2_SANDBOX_CLEANUP_HOURS:-24}"
if [[ -n $ROOT ]]; then
    LOG="$ROOT/.setup.log"
else
    LOG=/var/log/ec2-sandbox-setup.log
fi
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

STEP=start
CHANGED=0

say() {
    printf 'ec2-sandbox-setup: %s: %s: %s\n' "$STEP" "$1" "$2" | tee -a "$LOG"
}

on_error() {
    local rc=$1 line=$2
    say failed "exit status $rc at user-data line $line (details in $LOG)"
    exit "$rc"
}
trap 'on_error $? $LINENO' ERR

die() {
    say failed "$1"
    exit 1
}

# Run a system-changing command; under SANDBOX_ROOT record it instead.
system() {
    if [[ -n $ROOT ]]; then
        printf '%s\n' "$*" >>"$ROOT/.system-commands"
        return 0
    fi
    "$@" >>"$LOG" 2>&1
}

have() {
    if [[ -n $ROOT ]]; then
        [[ -x $ROOT/usr/bin/$1 || -x $ROOT/usr/sbin/$1 ]]
    else
        command -v "$1" >/dev/null 2>&1
    fi
}

# install_file MODE PATH: write stdin to PATH (below ROOT) atomically; CHANGED=1 when the content or mode changed.
install_file() {
    local mode=$1 path=$ROOT$2 tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $path && ! -L $path ]] && cmp -s "$tmp" "$path" \
        && [[ $(stat -c %a "$path") == "$(stat -c %a "$tmp")" ]]; then
        rm -f "$tmp"
        return 0
    fi
    mv -f "$tmp" "$path"
    CHANGED=1
}

# ensure_dir MODE PATH: a real directory owned by root with exactly MODE.
ensure_dir() {
    local mode=$1 path=$ROOT$2
    if [[ -L $path ]]; then
        die "$2 is a symlink; refusing to use it"
    fi
    if [[ ! -d $path ]]; then
        mkdir -p "$path"
        CHANGED=1
    fi
    if [[ $EUID -eq 0 && $(stat -c %u:%g "$path") != 0:0 ]]; then
        chown root:root "$path"
        CHANGED=1
    fi
    if [[ $(stat -c %a "$path") != "${mode#0}" ]]; then
        chmod "$mode" "$path"
        CHANGED=1
    fi
}

finish_step() {
    if [[ $CHANGED -eq 1 ]]; then
        say changed "$1"
    else
        say ok "$1"
    fi
    CHANGED=0
}

if [[ -n $ROOT && ! -d $ROOT ]]; then
    echo "SANDBOX_ROOT=$ROOT is not a directory" >&2
    exit 2
fi
if [[ -z $ROOT && $EUID -ne 0 ]]; then
    echo "ec2-sandbox setup must run as root" >&2
    exit 2
fi
# No leading 0: bash arithmetic would read the number as octal.
if ! [[ $CLEANUP_HOURS =~ ^[1-9][0-9]*$ ]] || ((CLEANUP_HOURS > 8760)); then
    echo "EC2_SANDBOX_CLEANUP_HOURS=$CLEANUP_HOURS: must be a whole number of hours from 1 to 8760" >&2
    exit 2
fi
mkdir -p "$(dirname "$LOG")"
touch "$LOG"

# ---------------------------------------------------------------------------------------------------------
STEP=packages
eic_present() {
    [[ -x $ROOT/usr/share/ec2-instance-connect/eic_run_authorized_keys \
        || -x $ROOT/opt/aws/bin/eic_run_authorized_keys ]]
}
pkg_missing=()
have python3 || pkg_missing+=(python3)
have node || pkg_missing+=(nodejs)
have bwrap || pkg_missing+=(bubblewrap)
eic_present || pkg_missing+=(ec2-instance-connect)
if have apt-get; then
    have iptables || pkg_missing+=(iptables)
    if ((${#pkg_missing[@]})); then
        for attempt in 1 2 3; do
            if system env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q update \
                && system env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q -y \
                    install --no-install-recommends "${pkg_missing[@]}"; then
                break
            fi
            if ((attempt == 3)); then
                die "apt-get could not install ${pkg_missing[*]} (see $LOG)"
            fi
            sleep $((attempt * 10))
        done
    fi
elif have dnf; then
    have iptables || pkg_missing+=(iptables-nft)
    if ((${#pkg_missing[@]})); then
        # strict=0: a package this release does not carry is skipped; what is still missing is checked below.
        system dnf -y -q --setopt=strict=0 install "${pkg_missing[@]}" \
            || die "dnf could not install ${pkg_missing[*]} (see $LOG)"
    fi
else
    die "neither apt-get nor dnf found: install ${pkg_missing[*]:-nothing} by hand (docs/manual-setup.md)"
fi
if [[ -z $ROOT ]] && ((${#pkg_missing[@]})); then
    have python3 || die "python3 is still missing after the install (see $LOG)"
    have iptables || die "iptables is still missing after the install (see $LOG)"
    still=()
    have node || still+=("nodejs (the node runtime will be unavailable)")
    have bwrap || still+=("bubblewrap (runs will not be namespaced)")
    eic_present || still+=("ec2-instance-connect (the eic transport will not work)")
    if ((${#still[@]})); then
        say warning "could not install: ${still[*]}"
    fi
fi
if ((${#pkg_missing[@]})); then
    say changed "installed ${pkg_missing[*]}"
else
    say ok "python3, node, bwrap, ec2-instance-connect and iptables present"
fi

# ---------------------------------------------------------------------------------------------------------
STEP=userns
# Ubuntu 23.10+ (kernel.apparmor_restrict_unprivileged_userns=1) lets only programs whose AppArmor profile
# says `userns` create user namespaces; bubblewrap runs as the unprivileged sandbox uid and needs one.
if [[ -f $ROOT/etc/apparmor.d/abi/4.0 ]]; then
    other_profile=$(grep -lsE '^[[:space:]]*profile[[:space:]]+[^[:space:]]+[[:space:]]+/usr/bin/bwrap' \
        "$ROOT"/etc/apparmor.d/* | grep -v '/ec2-sandbox-bwrap$' || true)
    if [[ -n $other_profile ]]; then
        say skipped "bwrap already has an AppArmor profile: $other_profile"
    else
        install_file 0644 /etc/apparmor.d/ec2-sandbox-bwrap <<'EOF'
# ec2-sandbox: lets bubblewrap create the user namespaces its sandboxes are built from.
abi <abi/4.0>,
include <tunables/global>

profile ec2-sandbox-bwrap /usr/bin/bwrap flags=(unconfined) {
  userns,

  include if exists <local/ec2-sandbox-bwrap>
}
EOF
        if [[ $CHANGED -eq 1 ]]; then
            system apparmor_parser -r /etc/apparmor.d/ec2-sandbox-bwrap
        fi
        finish_step "AppArmor profile ec2-sandbox-bwrap allows bwrap to create user namespaces"
    fi
else
    say skipped "no AppArmor 4 policy on this system: user namespaces are not restricted by it"
fi

# ---------------------------------------------------------------------------------------------------------
STEP=uid-range
# The runner gives every session (or session-less task) its own uid from this range; no passwd entry is
# needed, but no account may own one of these ids, and useradd must not hand them out as subordinate ids.
for db in passwd group; do
    if [[ -f $ROOT/etc/$db ]]; then
        clash=$(awk -F: -v lo="$UID_FIRST" -v hi="$UID_LAST" '$3 >= lo && $3 <= hi {print $1 "(" $3 ")"}' \
            "$ROOT/etc/$db")
        if [[ -n $clash ]]; then
            die "/etc/$db has ids in the sandbox range $UID_FIRST-$UID_LAST: $clash"
        fi
    fi
done
overlaps=()
for db in subuid subgid; do
    file=$ROOT/etc/$db
    mkdir -p "$ROOT/etc"
    if [[ ! -e $file ]]; then
        : >"$file"
    fi
    if ! grep -qx "ec2-sandbox:$UID_FIRST:$UID_COUNT" "$file"; then
        printf 'ec2-sandbox:%s:%s\n' "$UID_FIRST" "$UID_COUNT" >>"$file"
        CHANGED=1
    fi
    while IFS= read -r line; do
        overlaps+=("$db $line")
    done < <(awk -F: -v lo="$UID_FIRST" -v hi="$UID_LAST" \
        '$1 != "ec2-sandbox" && $2 <= hi && $2 + $3 - 1 >= lo {print $1 ":" $2 ":" $3}' "$file")
done
if ((${#overlaps[@]})); then
    say warning "subordinate id ranges overlap the sandbox range (those users' containers share its ids): ${overlaps[*]}"
fi
finish_step "uids $UID_FIRST-$UID_LAST reserved for sandboxed code"

# ---------------------------------------------------------------------------------------------------------
STEP=dirs
mkdir -p "$ROOT/var/lib" "$ROOT/usr/local/lib" "$ROOT$UNIT_DIR"
ensure_dir 0755 "$ETC_DIR"
ensure_dir 0755 "$LIB_DIR"
ensure_dir 0711 "$BASE_DIR"
install_file 0644 "$ETC_DIR/setup-version" <<EOF
ec2-sandbox instance setup $SETUP_VERSION
EOF
finish_step "$BASE_DIR root-owned 0711; $ETC_DIR and $LIB_DIR in place"

# ---------------------------------------------------------------------------------------------------------
STEP=firewall
install_file 0755 "$LIB_DIR/imds-guard" <<'GUARD'
#!/bin/bash
# ec2-sandbox: keep the sandbox uids (200000-265535) away from the instance metadata service, then leave the
# marker the runner reads. Run at every boot by ec2-sandbox-imds-guard.service (iptables rules do not persist).
# With SANDBOX_ROOT set the iptables calls are recorded in $SANDBOX_ROOT/.system-commands instead.
set -euo pipefail
ROOT="${SANDBOX_ROOT:-}"
ROOT="${ROOT%/}"
MARKER="$ROOT/etc/ec2-sandbox/imds-blocked"
UIDS=200000-265535

ensure_rule() {
    local tool=$1 dest=$2
    local rule=(OUTPUT -m owner --uid-owner "$UIDS" -d "$dest" -j REJECT)
    if [[ -n $ROOT ]]; then
        printf '%s\n' "$tool -w -C ${rule[*]}" "$tool -w -I ${rule[*]}" >>"$ROOT/.system-commands"
        return 0
    fi
    if ! "$tool" -w -C "${rule[@]}" 2>/dev/null; then
        "$tool" -w -I "${rule[@]}"
    fi
    # Verify: the marker is a promise, so it is written only once the rule is really in the table.
    "$tool" -w -C "${rule[@]}"
}

rm -f "$MARKER"
ensure_rule iptables 169.254.169.254/32
if [[ -n $ROOT || -e /proc/net/if_inet6 ]]; then
    ensure_rule ip6tables fd00:ec2::254/128
fi
mkdir -p "$(dirname "$MARKER")"
printf 'uids %s: REJECT to 169.254.169.254 and fd00:ec2::254 (iptables/ip6tables OUTPUT)\n' "$UIDS" \
    >"$MARKER.tmp"
mv -f "$MARKER.tmp" "$MARKER"
GUARD
install_file 0644 "$UNIT_DIR/ec2-sandbox-imds-guard.service" <<'EOF'
[Unit]
Description=ec2-sandbox: keep sandbox uids away from the instance metadata service
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/ec2-sandbox/imds-guard

[Install]
WantedBy=multi-user.target
EOF
if [[ -n $ROOT ]]; then
    SANDBOX_ROOT=$ROOT "$ROOT$LIB_DIR/imds-guard"
else
    "$LIB_DIR/imds-guard" >>"$LOG" 2>&1 || die "could not install the metadata firewall rule (see $LOG)"
fi
system systemctl daemon-reload
system systemctl enable ec2-sandbox-imds-guard.service
finish_step "uids $UID_FIRST-$UID_LAST cannot reach 169.254.169.254 / fd00:ec2::254; marker $ETC_DIR/imds-blocked"

# ---------------------------------------------------------------------------------------------------------
STEP=cleanup
install_file 0755 "$LIB_DIR/cleanup.py" <<'PYTHON'
#!/usr/bin/env python3
"""Hourly cleanup (ec2-sandbox-cleanup.timer): the runner on this instance removes what is older than --hours.

The runner is what knows the layout and removes safely (through dir fds, never what a run in progress holds,
by its own records of when each task and session was last used). This script only finds the copy SSM left in
the root-only staging dir and asks it. Before any client has run code here there is nothing to clean.
"""

import argparse
import json
import os
import stat
import subprocess
import sys


def newest_runner(base):
    """The newest runner copy in <base>/staging, if the dir and the file are this user's alone."""
    staging = os.path.join(base, "staging")
    try:
        st = os.lstat(staging)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SystemExit("refusing %s: not a directory this user alone may write" % staging)
    found = []
    for name in os.listdir(staging):
        path = os.path.join(staging, name)
        st = os.lstat(path)
        if name.startswith("runner-") and name.endswith(".py") and stat.S_ISREG(st.st_mode):
            if st.st_uid == os.geteuid() and not st.st_mode & 0o022:
                found.append((st.st_mtime, path))
    return max(found)[1] if found else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", default="/var/lib/ec2-sandbox")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    args = parser.parse_args()
    base = os.path.abspath(args.base_dir)
    try:
        if not stat.S_ISDIR(os.lstat(base).st_mode):
            print("refusing %s: not a directory (a link is never followed)" % base, file=sys.stderr)
            return 2
    except FileNotFoundError:
        print(json.dumps({"base_dir": base, "removed": [], "skipped": []}))
        return 0
    runner = newest_runner(base)
    if runner is None:
        note = "no runner has run on this instance yet: nothing to clean"
        print(json.dumps({"base_dir": base, "removed": [], "skipped": [], "note": note}))
        return 0
    request = {"v": 1, "op": "cleanup", "base_dir": base, "hours": args.hours, "dry_run": args.dry_run}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", runner], input=json.dumps(request).encode(), capture_output=True
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(b'{"envelope"')]
    envelope = json.loads(lines[-1])["envelope"] if lines else None
    if not envelope or not envelope.get("ok"):
        error = (envelope or {}).get("error") or {"message": proc.stderr.decode("utf-8", "replace")[-2000:]}
        print("the runner's cleanup failed: %s" % error.get("message"), file=sys.stderr)
        return 1
    print(json.dumps(envelope["result"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
PYTHON
if [[ ! -f $ROOT$ETC_DIR/cleanup.conf ]]; then
    install_file 0644 "$ETC_DIR/cleanup.conf" <<EOF
# ec2-sandbox-cleanup.timer removes task and session dirs older than this many hours.
CLEANUP_HOURS=$CLEANUP_HOURS
EOF
fi
install_file 0644 "$UNIT_DIR/ec2-sandbox-cleanup.service" <<'EOF'
[Unit]
Description=ec2-sandbox: remove expired task and session dirs
After=local-fs.target

[Service]
Type=oneshot
Environment=CLEANUP_HOURS=24
EnvironmentFile=-/etc/ec2-sandbox/cleanup.conf
ExecStart=/usr/bin/python3 /usr/local/lib/ec2-sandbox/cleanup.py --base-dir /var/lib/ec2-sandbox --hours ${CLEANUP_HOURS}
Nice=10
IOSchedulingClass=idle
NoNewPrivileges=yes
PrivateTmp=yes
PrivateNetwork=yes
ProtectSystem=strict
ProtectHome=yes
ReadWritePaths=/var/lib/ec2-sandbox
EOF
install_file 0644 "$UNIT_DIR/ec2-sandbox-cleanup.timer" <<'EOF'
[Unit]
Description=ec2-sandbox: hourly removal of expired task and session dirs

[Timer]
OnCalendar=hourly
RandomizedDelaySec=300
Persistent=true

[Install]
WantedBy=timers.target
EOF
system systemctl daemon-reload
system systemctl enable --now ec2-sandbox-cleanup.timer
finish_step "ec2-sandbox-cleanup.timer removes dirs older than \$CLEANUP_HOURS from $ETC_DIR/cleanup.conf"

STEP=complete
say ok "instance setup $SETUP_VERSION complete"
