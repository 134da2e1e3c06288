#!/usr/bin/env bash
# create_ec2_sandbox.sh - provision a ready, locked-down ec2-sandbox instance in one command (or --delete it).
#
# What it makes, all named after --name and tagged ec2-sandbox:name=<name> (that tag is how --delete and
# reruns find them):
#   IAM role <name>-role + instance profile <name>-profile with only AmazonSSMManagedInstanceCore
#   security group <name>-sg: no inbound rule by default (SSM needs none: the agent connects out);
#     tcp/22 from --ssh-from CIDRs (the eic/ssh transports connecting straight to the instance) and/or from
#     the EC2 Instance Connect Endpoint's security group (--eic-endpoint: tunnelled traffic comes from the
#     endpoint's network interface). Outbound only tcp/443 (SSM, EIC, package mirrors over https), tcp/80
#     (Ubuntu's apt mirrors are http), udp+tcp/53 (DNS to resolvers outside the VPC). The VPC resolver, the
#     time service and the metadata service are link-local and never filtered by security groups.
#   with --eic-endpoint: security group <name>-eice-sg (outbound tcp/22 to <name>-sg only) and an EC2
#     Instance Connect Endpoint in the instance's subnet (or the VPC's existing endpoint, reused)
#   instance <name>: Ubuntu 24.04 LTS (or --ami), IMDSv2 required with hop limit 1, encrypted gp3 root volume,
#     user-data provisioning/user-data.sh (gzip-compressed: cloud-init unpacks it)
# Then it waits for the instance and for SSM, merges an environment into the configuration file, and runs
# `ec2-sandbox status` and a hello-world through the toolkit.
#
# With --fleet --min N --max M, instead of the instance (same IAM role, profile and security group):
#   launch template <name>-lt: the instance's locked-down settings (image, type, profile, group, IMDSv2 with
#     hop limit 1, encrypted gp3 root volume, the same user-data, tags); a rerun makes it a new default version
#   Auto Scaling group <name>: N to M instances from the template's default version, in --subnet or the
#     default VPC's default subnets
#   a warm pool of stopped (or, --warm-pool hibernated, hibernated) instances already set up, so a scale-out
#     starts instances in seconds instead of launching them
#   target tracking on the group's average CPU (ASGAverageCPUUtilization, 60%): AWS publishes the metric, so
#     the instances' role stays SSM-only and no client needs cloudwatch:PutMetricData (README "Fleets")
#   DynamoDB table <name>-fleet (pk/sk strings, on demand, TTL on ttl): session placements and slot leases
# and the environment names the group and the table (transport fleet).
#
# Reruns reuse what exists and repair what drifted (security group rules and membership, the instance
# profile, IMDSv2); what cannot be repaired in place (an unencrypted root volume) is said plainly.
# An interrupted run is finished by running it again or removed with --delete.
# The permissions it needs are in docs/iam-policy.json.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
    echo "create_ec2_sandbox.sh needs bash 4.4 or later (this is $BASH_VERSION; on macOS: brew install bash)" >&2
    exit 1
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly USER_DATA_FILE="$SCRIPT_DIR/provisioning/user-data.sh"
readonly TAG_KEY="ec2-sandbox:name"
readonly SSM_POLICY_NAME="AmazonSSMManagedInstanceCore"
readonly IAM_RETRY_ATTEMPTS=12

INSTANCE_TYPE=""
AMI=""
REGION=""
PROFILE=""
SKIP_TEST=0
NAME="ec2-sandbox"
ARCH="x86_64"
SUBNET=""
ENVIRONMENT="default"
CONFIG=""
DRY_RUN=0
DELETE=0
SSH_FROM=()
EIC_ENDPOINT=0
FLEET=0
FLEET_MIN=""
FLEET_MAX=""
WARM_POOL=stopped
# Set when a dry run has no working credentials: reads are printed too, and answered with placeholders.
OFFLINE=0
# Bounded waits; the environment may shorten them (tests) or lengthen them (slow regions).
WAIT_SECONDS="${EC2_SANDBOX_WAIT_SECONDS:-900}"
POLL_SECONDS="${EC2_SANDBOX_POLL_SECONDS:-5}"

usage() {
    cat <<'EOF'
Usage: create_ec2_sandbox.sh [options]

Provision an EC2 instance ready for ec2-sandbox (SSM, optionally EC2 Instance Connect; no key pairs), write
its environment into the configuration file, and test it. Rerun to finish, check and repair; --delete to
remove it all.

Network (default: SSM only - no inbound rule at all, the safest choice):
  --ssh-from CIDR     also admit tcp/22 from CIDR (repeatable), for the eic/ssh transports connecting straight
                      to the instance's public or private address (e.g. your address: 203.0.113.7/32)
  --eic-endpoint      also admit tcp/22 through an EC2 Instance Connect Endpoint in the instance's subnet
                      (created, or the VPC's existing one reused) whose security group the instance's admits;
                      for private instances (transport eic with eic_endpoint_id)
  The eic and ssh transports need ssh_sudo (written to the configuration with either option) for per-session
  uids and the metadata guard; without it the runner runs as the login user.

Options:
  --name NAME         resource name prefix and tag value (default: ec2-sandbox)
  --type TYPE         instance type (default: t3.small; t4g.small with --arch arm64)
  --arch ARCH         x86_64 or arm64 (Graviton) (default: x86_64)
  --ami AMI_ID        AMI to launch (default: latest Ubuntu 24.04 LTS from the public SSM parameter)
  --subnet SUBNET_ID  subnet to launch in (default: the default VPC's default subnet)
  --region REGION     AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, then the profile's region)
  --profile PROFILE   AWS CLI profile (default: $AWS_PROFILE; else "default" if it exists and no
                      AWS_ACCESS_KEY_ID is set; else none: the CLI's default credential chain)
  --environment NAME  environment to write in the configuration file (default: default)
  --config PATH       configuration file (default: $EC2_SANDBOX_CONFIG, then ./config.json)
  --skip-test         do not wait for SSM nor run the connection test
  --dry-run           print every AWS call; run only the read-only ones; change nothing (without working
                      credentials: print what would be called, with placeholders)
  --delete            remove everything tagged with --name: the instance or fleet (group, warm pool, launch
                      template, table), security groups, instance profile and role

Fleet (README "Fleets"):
  --fleet             an Auto Scaling group of instances instead of one, with a warm pool, a scaling policy
                      and the DynamoDB table that placements and slot leases live in
  --min N             instances the group keeps running (default 1)
  --max M             most instances the group scales out to (default 4; at most 100)
  --warm-pool STATE   stopped (default) or hibernated: how the warm pool keeps its prepared instances
  -h, --help          show this help

Environment: EC2_SANDBOX_WAIT_SECONDS (default 900) bounds each wait; EC2_SANDBOX_POLL_SECONDS (default 5);
EC2_SANDBOX_CLI overrides how the toolkit is run (default: ec2-sandbox on PATH, else `uv run ec2-sandbox`).
EOF
}

log() { printf '==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
warn() { printf '==> warning: %s\n' "$*" >&2; }
die() {
    printf 'create_ec2_sandbox.sh: error: %s\n' "$*" >&2
    exit 1
}

need_value() {
    if [[ $# -lt 2 || -z $2 || $2 == --* ]]; then
        die "$1 needs a value (see --help)"
    fi
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --name) need_value "$@"; NAME=$2; shift 2 ;;
        --type) need_value "$@"; INSTANCE_TYPE=$2; shift 2 ;;
        --arch) need_value "$@"; ARCH=$2; shift 2 ;;
        --ami) need_value "$@"; AMI=$2; shift 2 ;;
        --subnet) need_value "$@"; SUBNET=$2; shift 2 ;;
        --region) need_value "$@"; REGION=$2; shift 2 ;;
        --profile) need_value "$@"; PROFILE=$2; shift 2 ;;
        --environment) need_value "$@"; ENVIRONMENT=$2; shift 2 ;;
        --config) need_value "$@"; CONFIG=$2; shift 2 ;;
        --skip-test) SKIP_TEST=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --delete) DELETE=1; shift ;;
        --ssh-from) need_value "$@"; SSH_FROM+=("$2"); shift 2 ;;
        --eic-endpoint) EIC_ENDPOINT=1; shift ;;
        --fleet) FLEET=1; shift ;;
        --min) need_value "$@"; FLEET_MIN=$2; shift 2 ;;
        --max) need_value "$@"; FLEET_MAX=$2; shift 2 ;;
        --warm-pool) need_value "$@"; WARM_POOL=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

[[ $NAME =~ ^[A-Za-z][A-Za-z0-9-]{0,39}$ ]] \
    || die "--name '$NAME': use 1-40 letters, digits or '-', starting with a letter"
case $ARCH in
    x86_64) SSM_ARCH=amd64; INSTANCE_TYPE=${INSTANCE_TYPE:-t3.small} ;;
    arm64) SSM_ARCH=arm64; INSTANCE_TYPE=${INSTANCE_TYPE:-t4g.small} ;;
    *) die "--arch '$ARCH': use x86_64 or arm64" ;;
esac
[[ $INSTANCE_TYPE =~ ^[a-z0-9-]+\.[a-z0-9]+$ ]] || die "--type '$INSTANCE_TYPE' is not an instance type"
[[ -z $AMI || $AMI =~ ^ami-[0-9a-f]{8,17}$ ]] || die "--ami '$AMI' is not an AMI id (ami-...)"
[[ -z $SUBNET || $SUBNET =~ ^subnet-[0-9a-f]{8,17}$ ]] || die "--subnet '$SUBNET' is not a subnet id"
for cidr in "${SSH_FROM[@]}"; do
    [[ $cidr =~ ^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])([.](25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}/([0-9]|[12][0-9]|3[0-2])$ ]] \
        || die "--ssh-from '$cidr' is not an IPv4 CIDR like 203.0.113.7/32"
done
if [[ $FLEET -eq 0 && -n $FLEET_MIN$FLEET_MAX ]]; then
    die "--min and --max size a fleet: add --fleet"
fi
FLEET_MIN=${FLEET_MIN:-1}
FLEET_MAX=${FLEET_MAX:-4}
# Checked as text first: bash arithmetic would evaluate anything else as code.
if ! [[ $FLEET_MIN =~ ^(0|[1-9][0-9]{0,2})$ && $FLEET_MAX =~ ^[1-9][0-9]{0,2}$ ]] \
    || ((FLEET_MIN > FLEET_MAX || FLEET_MAX > 100)); then
    die "--min $FLEET_MIN --max $FLEET_MAX: whole numbers with 0 <= min <= max and 1 <= max <= 100"
fi
case $WARM_POOL in
    stopped) WARM_STATE=Stopped ;;
    hibernated) WARM_STATE=Hibernated ;;
    *) die "--warm-pool '$WARM_POOL': use stopped or hibernated" ;;
esac
[[ $ENVIRONMENT =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] \
    || die "--environment '$ENVIRONMENT': use letters, digits, '.', '_' or '-', starting with a letter or digit"
# Checked here because bash arithmetic evaluates text: a leading 0 would make a number octal (and 08 an
# error), anything else would be code. The status wait has its own variable: checked the same way.
STATUS_WAIT_SECONDS="${EC2_SANDBOX_STATUS_WAIT_SECONDS:-$WAIT_SECONDS}"
[[ $WAIT_SECONDS =~ ^[1-9][0-9]*$ && $STATUS_WAIT_SECONDS =~ ^[1-9][0-9]*$ ]] \
    || die "EC2_SANDBOX_WAIT_SECONDS and EC2_SANDBOX_STATUS_WAIT_SECONDS must be whole numbers of seconds from 1"
[[ $POLL_SECONDS =~ ^([1-9][0-9]*([.][0-9]+)?|0?[.][0-9]*[1-9][0-9]*)$ ]] \
    || die "EC2_SANDBOX_POLL_SECONDS must be a number of seconds above 0"
CONFIG=${CONFIG:-${EC2_SANDBOX_CONFIG:-./config.json}}
# Checked before anything is created: the environment is merged into this file at the end.
if [[ $DELETE -eq 0 && -e $CONFIG ]] && ! jq -e 'type == "object"' "$CONFIG" >/dev/null 2>&1; then
    die "$CONFIG is not a JSON object (broken JSON?); fix or move it first - nothing was changed"
fi

# ------------------------------------------------------------------------------------------------------
# Tools and AWS access
# ------------------------------------------------------------------------------------------------------

for tool in aws jq gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not installed"
done
[[ -r $USER_DATA_FILE ]] || die "cannot read the instance setup script $USER_DATA_FILE"

# The profile used here is the one written to the configuration, so the toolkit authenticates as this script
# did. With keys in the environment and no profile named, none is used (the CLI would otherwise prefer a
# "default" profile over those keys), and the configuration gets none: the toolkit's default chain finds them.
PROFILE=${PROFILE:-${AWS_PROFILE:-}}
if [[ -z $PROFILE && -z ${AWS_ACCESS_KEY_ID:-} ]] && grep -qsE '^[[:space:]]*\[(profile )?default\]' \
    "${AWS_CONFIG_FILE:-$HOME/.aws/config}" "${AWS_SHARED_CREDENTIALS_FILE:-$HOME/.aws/credentials}"; then
    PROFILE=default
fi
PROFILE_ARGS=()
if [[ -n $PROFILE ]]; then
    PROFILE_ARGS=(--profile "$PROFILE")
fi
if [[ -z $REGION ]]; then
    REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
fi
if [[ -z $REGION ]]; then
    REGION=$(aws configure get region "${PROFILE_ARGS[@]}" 2>/dev/null || true)
fi
[[ -n $REGION ]] || die "no region: pass --region, set AWS_REGION, or configure one for profile '${PROFILE:-default}'"
[[ $REGION =~ ^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$ ]] || die "--region '$REGION' is not a region name"

export AWS_PAGER=""
AWS=(aws --region "$REGION" "${PROFILE_ARGS[@]}" --output json)
WORK_DIR=$(mktemp -d)
trap 'rm -rf "$WORK_DIR"' EXIT
AWS_ERR="$WORK_DIR/aws-stderr"

# aws_call read|write ARGS...: run one AWS CLI call. Under --dry-run every call is printed, and write calls
# are not run (they print nothing on stdout); without credentials reads are not run either, and answered as
# an empty account would answer them, with placeholders. On failure the CLI's message is kept in $AWS_ERR.
aws_call() {
    local kind=$1
    shift
    if [[ $DRY_RUN -eq 1 ]]; then
        local shown
        shown=$(printf ' %q' "${AWS[@]}" "$@")
        if [[ $kind == write ]]; then
            printf '[dry-run] would run:%s\n' "$shown" >&2
            return 0
        fi
        if [[ $OFFLINE -eq 1 ]]; then
            printf '[dry-run] would read:%s\n' "$shown" >&2
            offline_answer "$@"
            return
        fi
        printf '[dry-run] reading:%s\n' "$shown" >&2
    fi
    "${AWS[@]}" "$@" 2>"$AWS_ERR"
}

# What an account with none of our resources answers, for a dry run without credentials; <...> are
# placeholders for what only AWS knows.
offline_answer() {
    case "$1 $2" in
        "sts get-caller-identity") echo '{"Account": "<account>", "Arn": "arn:aws:iam::<account>:user/<you>"}' ;;
        "iam get-role" | "iam get-instance-profile")
            echo "NoSuchEntity (dry run without credentials: assumed absent)" >"$AWS_ERR"
            return 1 ;;
        "dynamodb describe-table")
            echo "ResourceNotFoundException (dry run without credentials: assumed absent)" >"$AWS_ERR"
            return 1 ;;
        "autoscaling describe-auto-scaling-groups") echo '{"AutoScalingGroups": []}' ;;
        "ec2 describe-launch-templates") echo '{"LaunchTemplates": []}' ;;
        "ssm get-parameter") echo '{"Parameter": {"Value": "<latest Ubuntu 24.04 AMI>"}}' ;;
        "ec2 describe-images")
            jq -cn --arg a "$ARCH" '{Images: [{Architecture: $a, RootDeviceName: "<root device>"}]}' ;;
        "ec2 describe-instance-types")
            jq -cn --arg a "$ARCH" '{InstanceTypes: [{ProcessorInfo: {SupportedArchitectures: [$a]}}]}' ;;
        "ec2 describe-vpcs") echo '{"Vpcs": [{"VpcId": "<default VPC>"}]}' ;;
        "ec2 describe-subnets")
            echo '{"Subnets": [{"VpcId": "<VPC of the subnet>", "SubnetId": "<default subnet>"}]}' ;;
        *) echo '{"Reservations": [], "SecurityGroups": [], "InstanceConnectEndpoints": []}' ;;
    esac
}

# did VERB WHAT: report a change made - or, in a dry run, one that would be made.
did() {
    if [[ $DRY_RUN -eq 1 ]]; then
        info "would $1 $2"
    elif [[ $1 == *e ]]; then
        info "${1}d $2"
    else
        info "${1}ed $2"
    fi
}

aws_fail() {
    die "$1: $(tr '\n' ' ' <"$AWS_ERR")"
}

aws_error_is() {
    grep -q -- "$1" "$AWS_ERR"
}

if ! CALLER=$(aws_call read sts get-caller-identity); then
    [[ $DRY_RUN -eq 1 ]] \
        || aws_fail "AWS credentials (profile '${PROFILE:-none: default chain}') do not work (aws sts get-caller-identity)"
    info "dry run without working credentials ($(head -c 200 "$AWS_ERR" | tr '\n' ' ')): reads are printed," \
        "not run, and <placeholders> stand for what AWS would answer"
    OFFLINE=1
    CALLER=$(offline_answer sts get-caller-identity)
fi
ACCOUNT=$(jq -r .Account <<<"$CALLER")
CALLER_ARN=$(jq -r .Arn <<<"$CALLER")
PARTITION=$(cut -d: -f2 <<<"$CALLER_ARN")
log "account $ACCOUNT as $CALLER_ARN, region $REGION, profile ${PROFILE:-none (default credential chain)}"

ROLE_NAME="$NAME-role"
PROFILE_NAME="$NAME-profile"
SG_NAME="$NAME-sg"
LT_NAME="$NAME-lt"
TABLE_NAME="$NAME-fleet"
SSM_POLICY_ARN="arn:$PARTITION:iam::aws:policy/$SSM_POLICY_NAME"
TAG_FILTER="Name=tag:$TAG_KEY,Values=$NAME"

# ------------------------------------------------------------------------------------------------------
# Lookups shared by create and delete
# ------------------------------------------------------------------------------------------------------

# Live (not terminated) instances carrying our tag, as a JSON array.
find_instances() {
    local out
    out=$(aws_call read ec2 describe-instances --filters "$TAG_FILTER" \
        "Name=instance-state-name,Values=pending,running,stopping,stopped,shutting-down") \
        || aws_fail "cannot list instances"
    jq -c '[.Reservations[].Instances[]]' <<<"$out"
}

# Prints the role document, or nothing when the role does not exist. IAM resources are found by name, but
# only touched when they carry our tag.
get_role() {
    if aws_call read iam get-role --role-name "$ROLE_NAME"; then
        return 0
    fi
    aws_error_is NoSuchEntity || aws_fail "cannot read role $ROLE_NAME"
}

role_is_ours() { # role_is_ours ROLE_DOCUMENT
    jq -e --arg k "$TAG_KEY" --arg v "$NAME" 'any(.Role.Tags[]?; .Key == $k and .Value == $v)' <<<"$1" >/dev/null
}

profile_is_ours() { # profile_is_ours INSTANCE_PROFILE_DOCUMENT
    jq -e --arg k "$TAG_KEY" --arg v "$NAME" 'any(.InstanceProfile.Tags[]?; .Key == $k and .Value == $v)' \
        <<<"$1" >/dev/null
}

# Prints the instance profile document, or nothing when it does not exist.
get_instance_profile() {
    if aws_call read iam get-instance-profile --instance-profile-name "$PROFILE_NAME"; then
        return 0
    fi
    aws_error_is NoSuchEntity || aws_fail "cannot read instance profile $PROFILE_NAME"
}

# wait_until DESCRIPTION COMMAND...: poll COMMAND until it succeeds, at most WAIT_SECONDS, with progress.
wait_until() {
    local what=$1 start now
    shift
    start=$(date +%s)
    while true; do
        if "$@"; then
            return 0
        fi
        now=$(date +%s)
        if ((now - start >= WAIT_SECONDS)); then
            die "gave up after ${WAIT_SECONDS}s waiting for $what (last state: ${WAIT_STATE:-unknown})"
        fi
        info "waiting for $what ($((now - start))s, state: ${WAIT_STATE:-unknown})"
        sleep "$POLL_SECONDS"
    done
}

# Rules are compared one (protocol, ports, source) at a time, so a rerun adds what is missing and revokes what
# is not ours - including the all-traffic egress rule every new group starts with.
# shellcheck disable=SC2016  # jq program text, not shell
RULES_JQ='
def atoms: [.[] | . as $p
    | ({p: $p.IpProtocol} + (if $p.IpProtocol == "-1" then {} else {f: $p.FromPort, t: $p.ToPort} end)) as $b
    | ((($p.IpRanges // [])[] | $b + {k: "IpRanges", v: {CidrIp: .CidrIp}, d: .Description}),
       (($p.Ipv6Ranges // [])[] | $b + {k: "Ipv6Ranges", v: {CidrIpv6: .CidrIpv6}, d: .Description}),
       (($p.PrefixListIds // [])[] | $b + {k: "PrefixListIds", v: {PrefixListId: .PrefixListId}, d: .Description}),
       (($p.UserIdGroupPairs // [])[] | $b + {k: "UserIdGroupPairs", v: {GroupId: .GroupId}, d: .Description}))];
def key: del(.d);
def perms: map({IpProtocol: .p} + (if .f == null then {} else {FromPort: .f, ToPort: .t} end)
    + {(.k): [.v + (if .d == null then {} else {Description: .d} end)]});
(($have | atoms) as $h | ($want | atoms) as $w
 | if $mode == "add" then [$w[] | select(key as $x | all($h[]; key != $x))]
   else [$h[] | select(key as $x | all($w[]; key != $x))] end) | perms'
sg_rules() { # sg_rules add|revoke HAVE WANT
    jq -cn --arg mode "$1" --argjson have "$2" --argjson want "$3" "$RULES_JQ"
}

# apply_rules GROUP_ID GROUP_DOCUMENT WANT_INGRESS WANT_EGRESS: make the group's rules exactly these.
apply_rules() {
    local sg=$1 doc=$2 direction have want revoke add
    for direction in ingress egress; do
        if [[ $direction == ingress ]]; then
            have=$(jq -c '.IpPermissions // []' <<<"$doc") want=$3
        else
            have=$(jq -c '.IpPermissionsEgress // []' <<<"$doc") want=$4
        fi
        revoke=$(sg_rules revoke "$have" "$want")
        if [[ $revoke != "[]" ]]; then
            aws_call write ec2 "revoke-security-group-$direction" --group-id "$sg" --ip-permissions "$revoke" \
                >/dev/null || aws_fail "cannot revoke $direction rules of $sg"
            did revoke "$direction rules of $sg not ours: $revoke"
        fi
        add=$(sg_rules add "$have" "$want")
        if [[ $add != "[]" ]]; then
            aws_call write ec2 "authorize-security-group-$direction" --group-id "$sg" --ip-permissions "$add" \
                >/dev/null || aws_fail "cannot add $direction rules to $sg"
            did add "$direction rules to $sg: $(jq -c 'map([.IpProtocol, .FromPort])' <<<"$add")"
        fi
    done
}

# ensure_group NAME DESCRIPTION: find our group NAME in $VPC or create it; sets GROUP_ID and GROUP_DOC.
ensure_group() {
    local name=$1 description=$2 out
    out=$(aws_call read ec2 describe-security-groups \
        --filters "Name=vpc-id,Values=$VPC" "Name=group-name,Values=$name") || aws_fail "cannot list security groups"
    GROUP_ID=$(jq -r '.SecurityGroups[0].GroupId // empty' <<<"$out")
    if [[ -n $GROUP_ID ]]; then
        jq -e --arg k "$TAG_KEY" --arg v "$NAME" 'any(.SecurityGroups[0].Tags[]?; .Key == $k and .Value == $v)' \
            <<<"$out" >/dev/null || die "security group $name ($GROUP_ID) is not tagged $TAG_KEY=$NAME"
        info "security group $name ($GROUP_ID) exists"
        GROUP_DOC=$(jq -c '.SecurityGroups[0]' <<<"$out")
        return 0
    fi
    out=$(aws_call write ec2 create-security-group --group-name "$name" --vpc-id "$VPC" --description "$description" \
        --tag-specifications "ResourceType=security-group,Tags=[{Key=$TAG_KEY,Value=$NAME},{Key=Name,Value=$name}]") \
        || aws_fail "cannot create security group $name"
    if [[ $DRY_RUN -eq 1 ]]; then
        GROUP_ID="<new $name>"
        # What a new group starts with: no inbound rule, all outbound allowed.
        GROUP_DOC='{"IpPermissions":[],"IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}'
    else
        GROUP_ID=$(jq -r .GroupId <<<"$out")
        out=$(aws_call read ec2 describe-security-groups --group-ids "$GROUP_ID") || aws_fail "cannot read $GROUP_ID"
        GROUP_DOC=$(jq -c '.SecurityGroups[0]' <<<"$out")
    fi
    did create "security group $name ($GROUP_ID)"
}

# ------------------------------------------------------------------------------------------------------
# --delete: everything carrying the tag, in dependency order
# ------------------------------------------------------------------------------------------------------

instances_gone() {
    local ids=("$@") out
    out=$(aws_call read ec2 describe-instances --instance-ids "${ids[@]}") || aws_fail "cannot read instances"
    WAIT_STATE=$(jq -r '[.Reservations[].Instances[].State.Name] | unique | join(",")' <<<"$out")
    jq -e 'all(.Reservations[].Instances[]; .State.Name == "terminated")' <<<"$out" >/dev/null
}

delete_group() {
    local sg=$1
    if aws_call write ec2 delete-security-group --group-id "$sg"; then
        return 0
    fi
    aws_error_is DependencyViolation || aws_fail "cannot delete security group $sg"
    WAIT_STATE="still in use by network interfaces"
    return 1
}

do_delete() {
    log "deleting everything tagged $TAG_KEY=$NAME in $REGION"
    local ids=() sgs=() out sg policies profile_doc role_doc
    delete_fleet
    out=$(find_instances) || exit 1
    mapfile -t ids < <(jq -r '.[].InstanceId' <<<"$out")
    if ((${#ids[@]})); then
        aws_call write ec2 terminate-instances --instance-ids "${ids[@]}" >/dev/null \
            || aws_fail "cannot terminate ${ids[*]}"
        did terminate "${ids[*]}"
        if [[ $DRY_RUN -eq 0 ]]; then
            wait_until "instances ${ids[*]} to terminate" instances_gone "${ids[@]}"
        fi
    else
        info "no instance tagged $TAG_KEY=$NAME"
    fi

    delete_endpoints
    out=$(aws_call read ec2 describe-security-groups --filters "$TAG_FILTER") \
        || aws_fail "cannot list security groups"
    mapfile -t sgs < <(jq -r '.SecurityGroups[].GroupId' <<<"$out")
    # The instance's and the endpoint's groups name each other in their rules: a group still named in
    # another's rule cannot be deleted, so their rules go first.
    for sg in "${sgs[@]}"; do
        apply_rules "$sg" "$(jq -c --arg g "$sg" '.SecurityGroups[] | select(.GroupId == $g)' <<<"$out")" '[]' '[]'
    done
    for sg in "${sgs[@]}"; do
        if [[ $DRY_RUN -eq 1 ]]; then
            aws_call write ec2 delete-security-group --group-id "$sg"
            did delete "security group $sg"
        else
            wait_until "security group $sg to be deletable" delete_group "$sg"
            did delete "security group $sg"
        fi
    done
    ((${#sgs[@]})) || info "no security group tagged $TAG_KEY=$NAME"

    role_doc=$(get_role) || exit 1
    if [[ -n $role_doc ]] && ! role_is_ours "$role_doc"; then
        die "role $ROLE_NAME exists but is not tagged $TAG_KEY=$NAME: not deleting it"
    fi
    profile_doc=$(get_instance_profile) || exit 1
    if [[ -n $profile_doc ]] && ! profile_is_ours "$profile_doc"; then
        die "instance profile $PROFILE_NAME exists but is not tagged $TAG_KEY=$NAME: not deleting it"
    fi
    if [[ -n $profile_doc ]]; then
        local role roles=()
        mapfile -t roles < <(jq -r '.InstanceProfile.Roles[].RoleName' <<<"$profile_doc")
        for role in "${roles[@]}"; do
            aws_call write iam remove-role-from-instance-profile --instance-profile-name "$PROFILE_NAME" \
                --role-name "$role" || aws_fail "cannot remove $role from $PROFILE_NAME"
        done
        aws_call write iam delete-instance-profile --instance-profile-name "$PROFILE_NAME" \
            || aws_fail "cannot delete instance profile $PROFILE_NAME"
        did delete "instance profile $PROFILE_NAME"
    fi
    if [[ -n $role_doc ]]; then
        policies=$(aws_call read iam list-attached-role-policies --role-name "$ROLE_NAME") \
            || aws_fail "cannot list the policies of $ROLE_NAME"
        local arn arns=() names=()
        mapfile -t arns < <(jq -r '.AttachedPolicies[].PolicyArn' <<<"$policies")
        for arn in "${arns[@]}"; do
            aws_call write iam detach-role-policy --role-name "$ROLE_NAME" --policy-arn "$arn" \
                || aws_fail "cannot detach $arn"
        done
        policies=$(aws_call read iam list-role-policies --role-name "$ROLE_NAME") \
            || aws_fail "cannot list the inline policies of $ROLE_NAME"
        mapfile -t names < <(jq -r '.PolicyNames[]' <<<"$policies")
        for arn in "${names[@]}"; do
            aws_call write iam delete-role-policy --role-name "$ROLE_NAME" --policy-name "$arn" \
                || aws_fail "cannot delete inline policy $arn"
        done
        aws_call write iam delete-role --role-name "$ROLE_NAME" || aws_fail "cannot delete role $ROLE_NAME"
        did delete "role $ROLE_NAME"
    fi
    if [[ -f $CONFIG ]] && jq -e --arg e "$ENVIRONMENT" 'type == "object" and has($e)' "$CONFIG" >/dev/null 2>&1; then
        info "environment '$ENVIRONMENT' in $CONFIG still names the deleted instance; edit or remove it"
    fi
    if [[ $DRY_RUN -eq 1 ]]; then
        log "dry run: nothing was changed"
    else
        log "done: nothing tagged $TAG_KEY=$NAME is left"
    fi
}

# Our live EC2 Instance Connect Endpoints, as a JSON array.
find_endpoints() {
    local out
    out=$(aws_call read ec2 describe-instance-connect-endpoints --filters "$TAG_FILTER" \
        "Name=state,Values=create-in-progress,create-complete,update-in-progress,update-complete,update-failed") \
        || aws_fail "cannot list EC2 Instance Connect Endpoints"
    jq -c '[.InstanceConnectEndpoints[]]' <<<"$out"
}

endpoint_state_is() { # endpoint_state_is ID STATE...
    local id=$1 out
    shift
    out=$(aws_call read ec2 describe-instance-connect-endpoints --instance-connect-endpoint-ids "$id") \
        || aws_fail "cannot read EC2 Instance Connect Endpoint $id"
    WAIT_STATE=$(jq -r '.InstanceConnectEndpoints[0].State' <<<"$out")
    local want
    for want in "$@"; do
        [[ $WAIT_STATE == "$want" ]] && return 0
    done
    [[ $WAIT_STATE == *failed ]] && die "EC2 Instance Connect Endpoint $id is $WAIT_STATE"
    return 1
}

delete_endpoints() {
    local endpoints id ids=()
    endpoints=$(find_endpoints) || exit 1
    mapfile -t ids < <(jq -r '.[].InstanceConnectEndpointId' <<<"$endpoints")
    for id in "${ids[@]}"; do
        aws_call write ec2 delete-instance-connect-endpoint --instance-connect-endpoint-id "$id" >/dev/null \
            || aws_fail "cannot delete EC2 Instance Connect Endpoint $id"
        if [[ $DRY_RUN -eq 0 ]]; then
            wait_until "EC2 Instance Connect Endpoint $id to be deleted" endpoint_state_is "$id" delete-complete
        fi
        did delete "EC2 Instance Connect Endpoint $id"
    done
}

# ------------------------------------------------------------------------------------------------------
# --fleet: launch template, Auto Scaling group, warm pool, scaling policy, DynamoDB table
# ------------------------------------------------------------------------------------------------------

# Prints the group's document, or nothing when there is no group of that name.
get_fleet_group() {
    local out
    out=$(aws_call read autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$NAME") \
        || aws_fail "cannot read Auto Scaling group $NAME"
    jq -c '.AutoScalingGroups[0] // empty' <<<"$out"
}

group_is_ours() { # group_is_ours GROUP_DOCUMENT
    jq -e --arg k "$TAG_KEY" --arg v "$NAME" 'any(.Tags[]?; .Key == $k and .Value == $v)' <<<"$1" >/dev/null
}

# Prints the table's ARN, or nothing when there is no table of that name.
get_fleet_table() {
    local out
    if out=$(aws_call read dynamodb describe-table --table-name "$TABLE_NAME"); then
        jq -r .Table.TableArn <<<"$out"
        return 0
    fi
    aws_error_is ResourceNotFoundException || aws_fail "cannot read table $TABLE_NAME"
}

table_is_ours() { # table_is_ours TABLE_ARN
    local out
    out=$(aws_call read dynamodb list-tags-of-resource --resource-arn "$1") || aws_fail "cannot read the tags of $1"
    jq -e --arg k "$TAG_KEY" --arg v "$NAME" 'any(.Tags[]?; .Key == $k and .Value == $v)' <<<"$out" >/dev/null
}

fleet_group_gone() {
    local doc
    doc=$(get_fleet_group) || exit 1
    WAIT_STATE=$(jq -r '.Status // "deleting"' <<<"${doc:-null}")
    [[ -z $doc ]]
}

fleet_in_service() {
    local doc
    doc=$(get_fleet_group) || exit 1
    FLEET_READY=$(jq -r '[.Instances[]? | select(.LifecycleState == "InService") | .InstanceId] | join(" ")' \
        <<<"${doc:-null}")
    WAIT_STATE="$(wc -w <<<"$FLEET_READY" | tr -d ' ') of $FLEET_MIN InService"
    (($(wc -w <<<"$FLEET_READY") >= FLEET_MIN))
}

fleet_online() {
    local out id
    for id in $FLEET_READY; do
        out=$(aws_call read ssm describe-instance-information --filters "Key=InstanceIds,Values=$id") \
            || aws_fail "cannot ask SSM about $id"
        WAIT_STATE="$id: $(jq -r '.InstanceInformationList[0].PingStatus // "not registered yet"' <<<"$out")"
        [[ $WAIT_STATE == "$id: Online" ]] || return 1
    done
}

# The group goes first (with its warm pool and scaling policy; force-delete terminates its instances, which
# it would otherwise replace), then the launch template it used, then the table.
delete_fleet() {
    local doc arn out lt
    doc=$(get_fleet_group) || exit 1
    if [[ -n $doc ]]; then
        group_is_ours "$doc" || die "Auto Scaling group $NAME is not tagged $TAG_KEY=$NAME: not deleting it"
        aws_call write autoscaling delete-auto-scaling-group --auto-scaling-group-name "$NAME" --force-delete \
            || aws_fail "cannot delete Auto Scaling group $NAME"
        if [[ $DRY_RUN -eq 0 ]]; then
            wait_until "Auto Scaling group $NAME to be deleted" fleet_group_gone
        fi
        did delete "Auto Scaling group $NAME, its warm pool, scaling policy and instances"
    fi
    out=$(aws_call read ec2 describe-launch-templates --filters "$TAG_FILTER") || aws_fail "cannot list launch templates"
    for lt in $(jq -r '.LaunchTemplates[].LaunchTemplateId' <<<"$out"); do
        aws_call write ec2 delete-launch-template --launch-template-id "$lt" >/dev/null \
            || aws_fail "cannot delete launch template $lt"
        did delete "launch template $lt"
    done
    arn=$(get_fleet_table) || exit 1
    if [[ -n $arn ]]; then
        table_is_ours "$arn" || die "table $TABLE_NAME is not tagged $TAG_KEY=$NAME: not deleting it"
        aws_call write dynamodb delete-table --table-name "$TABLE_NAME" >/dev/null \
            || aws_fail "cannot delete table $TABLE_NAME"
        did delete "table $TABLE_NAME (its session placements and leases)"
    fi
}

provision_fleet() {
    local data out lt_id version doc arn tags
    log "fleet $NAME: launch template $LT_NAME, Auto Scaling group of $FLEET_MIN to $FLEET_MAX, warm pool" \
        "($WARM_POOL), table $TABLE_NAME"
    gzip -9 -n -c "$USER_DATA_FILE" >"$WORK_DIR/user-data.gz"
    (($(wc -c <"$WORK_DIR/user-data.gz") <= 16384)) || die "compressed user-data is over EC2's 16384 bytes"
    tags=$(jq -cn --arg k "$TAG_KEY" --arg v "$NAME" '[{Key: $k, Value: $v}, {Key: "Name", Value: $v}]')
    # The single instance's settings, as template data (user-data base64 text, as templates take it).
    data=$(jq -cn --arg ami "$AMI" --arg type "$INSTANCE_TYPE" --arg profile "$PROFILE_NAME" --arg sg "$SG" \
        --arg root "$ROOT_DEVICE" --arg ud "$(base64 <"$WORK_DIR/user-data.gz" | tr -d '\n')" --argjson tags "$tags" \
        --arg warm "$WARM_STATE" '{ImageId: $ami, InstanceType: $type, IamInstanceProfile: {Name: $profile},
        SecurityGroupIds: [$sg], UserData: $ud,
        MetadataOptions: {HttpTokens: "required", HttpPutResponseHopLimit: 1, HttpEndpoint: "enabled"},
        BlockDeviceMappings: [{DeviceName: $root, Ebs: {Encrypted: true, VolumeType: "gp3", VolumeSize: 16,
            DeleteOnTermination: true}}],
        TagSpecifications: [{ResourceType: "instance", Tags: $tags}, {ResourceType: "volume", Tags: $tags}]}
        + (if $warm == "Hibernated" then {HibernationOptions: {Configured: true}} else {} end)')
    out=$(aws_call read ec2 describe-launch-templates --filters "$TAG_FILTER") || aws_fail "cannot list launch templates"
    lt_id=$(jq -r '.LaunchTemplates[0].LaunchTemplateId // empty' <<<"$out")
    if [[ -z $lt_id ]]; then
        aws_call write ec2 create-launch-template --launch-template-name "$LT_NAME" --launch-template-data "$data" \
            --tag-specifications "ResourceType=launch-template,Tags=[{Key=$TAG_KEY,Value=$NAME},{Key=Name,Value=$NAME}]" \
            >/dev/null || aws_fail "cannot create launch template $LT_NAME"
        did create "launch template $LT_NAME"
    else
        # A rerun puts the locked-down settings back as the new default version (whatever drifted).
        out=$(aws_call write ec2 create-launch-template-version --launch-template-id "$lt_id" \
            --launch-template-data "$data") || aws_fail "cannot add a version to $LT_NAME"
        if [[ $DRY_RUN -eq 0 ]]; then
            version=$(jq -r .LaunchTemplateVersion.VersionNumber <<<"$out")
            aws_call write ec2 modify-launch-template --launch-template-id "$lt_id" --default-version "$version" \
                >/dev/null || aws_fail "cannot make version $version the default of $LT_NAME"
            did make "version $version of $LT_NAME its default"
        fi
    fi
    doc=$(get_fleet_group) || exit 1
    if [[ -z $doc ]]; then
        aws_call write autoscaling create-auto-scaling-group --auto-scaling-group-name "$NAME" \
            --launch-template "LaunchTemplateName=$LT_NAME,Version=\$Default" --min-size "$FLEET_MIN" \
            --max-size "$FLEET_MAX" --desired-capacity "$FLEET_MIN" --vpc-zone-identifier "${FLEET_SUBNETS:-$SUBNET}" \
            --tags "ResourceId=$NAME,ResourceType=auto-scaling-group,Key=$TAG_KEY,Value=$NAME,PropagateAtLaunch=true" \
            || aws_fail "cannot create Auto Scaling group $NAME"
        did create "Auto Scaling group $NAME ($FLEET_MIN to $FLEET_MAX)"
    else
        group_is_ours "$doc" || die "Auto Scaling group $NAME exists but is not tagged $TAG_KEY=$NAME; choose another --name"
        aws_call write autoscaling update-auto-scaling-group --auto-scaling-group-name "$NAME" \
            --launch-template "LaunchTemplateName=$LT_NAME,Version=\$Default" --min-size "$FLEET_MIN" \
            --max-size "$FLEET_MAX" || aws_fail "cannot update Auto Scaling group $NAME"
        did update "Auto Scaling group $NAME ($FLEET_MIN to $FLEET_MAX)"
    fi
    aws_call write autoscaling put-warm-pool --auto-scaling-group-name "$NAME" --pool-state "$WARM_STATE" \
        --min-size 0 --instance-reuse-policy ReuseOnScaleIn=true || aws_fail "cannot set the warm pool of $NAME"
    did set "the warm pool of $NAME ($WARM_POOL instances, up to the group's maximum)"
    aws_call write autoscaling put-scaling-policy --auto-scaling-group-name "$NAME" --policy-name "$NAME-cpu" \
        --policy-type TargetTrackingScaling --target-tracking-configuration \
        '{"PredefinedMetricSpecification": {"PredefinedMetricType": "ASGAverageCPUUtilization"}, "TargetValue": 60.0}' \
        >/dev/null || aws_fail "cannot set the scaling policy of $NAME"
    did set "target tracking on $NAME's average CPU at 60%"
    arn=$(get_fleet_table) || exit 1
    if [[ -z $arn ]]; then
        aws_call write dynamodb create-table --table-name "$TABLE_NAME" --billing-mode PAY_PER_REQUEST \
            --attribute-definitions AttributeName=pk,AttributeType=S AttributeName=sk,AttributeType=S \
            --key-schema AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE \
            --tags "Key=$TAG_KEY,Value=$NAME" >/dev/null || aws_fail "cannot create table $TABLE_NAME"
        if [[ $DRY_RUN -eq 0 ]]; then
            aws_call read dynamodb wait table-exists --table-name "$TABLE_NAME" || aws_fail "table $TABLE_NAME did not appear"
        fi
        aws_call write dynamodb update-time-to-live --table-name "$TABLE_NAME" \
            --time-to-live-specification Enabled=true,AttributeName=ttl >/dev/null \
            || aws_fail "cannot turn on expiry for $TABLE_NAME"
        did create "table $TABLE_NAME (on demand, items expire at their ttl)"
    else
        table_is_ours "$arn" || die "table $TABLE_NAME exists but is not tagged $TAG_KEY=$NAME; choose another --name"
        info "table $TABLE_NAME exists"
    fi
    if [[ $DRY_RUN -eq 1 ]]; then
        info "[dry-run] would poll: autoscaling describe-auto-scaling-groups (until $FLEET_MIN InService)"
        return 0
    fi
    wait_until "$FLEET_MIN instance(s) of $NAME to be InService" fleet_in_service
    info "InService: ${FLEET_READY:-none}"
    if [[ $SKIP_TEST -eq 0 ]]; then
        wait_until "the SSM agents of $NAME to report Online" fleet_online
        info "SSM agents of $NAME are Online"
    fi
}

if [[ $DELETE -eq 1 ]]; then
    do_delete
    exit 0
fi

# ------------------------------------------------------------------------------------------------------
# AMI and instance type
# ------------------------------------------------------------------------------------------------------

log "image and instance type"
if [[ -z $AMI ]]; then
    param="/aws/service/canonical/ubuntu/server/24.04/stable/current/$SSM_ARCH/hvm/ebs-gp3/ami-id"
    out=$(aws_call read ssm get-parameter --name "$param") || aws_fail "cannot read the Ubuntu AMI from $param"
    AMI=$(jq -r .Parameter.Value <<<"$out")
    [[ $OFFLINE -eq 1 || $AMI =~ ^ami-[0-9a-f]+$ ]] || die "$param holds '$AMI', not an AMI id"
fi
out=$(aws_call read ec2 describe-images --image-ids "$AMI") || aws_fail "cannot describe $AMI"
jq -e '.Images | length == 1' <<<"$out" >/dev/null || die "AMI $AMI not found in $REGION"
AMI_ARCH=$(jq -r '.Images[0].Architecture' <<<"$out")
ROOT_DEVICE=$(jq -r '.Images[0].RootDeviceName // "/dev/sda1"' <<<"$out")
[[ $AMI_ARCH == "$ARCH" ]] || die "AMI $AMI is $AMI_ARCH, not $ARCH (use --arch $AMI_ARCH or another --ami)"
out=$(aws_call read ec2 describe-instance-types --instance-types "$INSTANCE_TYPE") \
    || aws_fail "instance type $INSTANCE_TYPE is not offered in $REGION"
jq -e --arg a "$ARCH" 'any(.InstanceTypes[0].ProcessorInfo.SupportedArchitectures[]; . == $a)' \
    <<<"$out" >/dev/null || die "instance type $INSTANCE_TYPE does not run $ARCH images"
info "AMI $AMI ($ARCH, root device $ROOT_DEVICE), type $INSTANCE_TYPE"

# ------------------------------------------------------------------------------------------------------
# IAM: role + instance profile with only the SSM core policy
# ------------------------------------------------------------------------------------------------------

log "IAM role $ROLE_NAME and instance profile $PROFILE_NAME"
TAGS_IAM=(--tags "Key=$TAG_KEY,Value=$NAME" "Key=Name,Value=$NAME")
ROLE_DOC=$(get_role) || exit 1
if [[ -n $ROLE_DOC ]]; then
    role_is_ours "$ROLE_DOC" || die "role $ROLE_NAME exists but is not tagged $TAG_KEY=$NAME; choose another --name"
    info "role $ROLE_NAME exists"
else
    trust=$(jq -cn '{Version: "2012-10-17", Statement: [{Effect: "Allow",
        Principal: {Service: "ec2.amazonaws.com"}, Action: "sts:AssumeRole"}]}')
    aws_call write iam create-role --role-name "$ROLE_NAME" --assume-role-policy-document "$trust" \
        --description "ec2-sandbox instance $NAME: SSM agent only" "${TAGS_IAM[@]}" >/dev/null \
        || aws_fail "cannot create role $ROLE_NAME"
    did create "role $ROLE_NAME"
fi
if [[ $DRY_RUN -eq 1 && -z $ROLE_DOC ]]; then
    aws_call write iam attach-role-policy --role-name "$ROLE_NAME" --policy-arn "$SSM_POLICY_ARN"
else
    policies=$(aws_call read iam list-attached-role-policies --role-name "$ROLE_NAME") \
        || aws_fail "cannot list the policies of $ROLE_NAME"
    extra=$(jq -r --arg p "$SSM_POLICY_ARN" '[.AttachedPolicies[].PolicyArn | select(. != $p)] | join(" ")' \
        <<<"$policies")
    [[ -z $extra ]] || die "role $ROLE_NAME has policies besides $SSM_POLICY_NAME ($extra): detach them;" \
        "code on the instance must not be able to command other instances"
    inline=$(aws_call read iam list-role-policies --role-name "$ROLE_NAME") || aws_fail "cannot list inline policies"
    jq -e '.PolicyNames | length == 0' <<<"$inline" >/dev/null \
        || die "role $ROLE_NAME has inline policies ($(jq -r '.PolicyNames | join(" ")' <<<"$inline")): delete them"
    if ! jq -e --arg p "$SSM_POLICY_ARN" 'any(.AttachedPolicies[]; .PolicyArn == $p)' <<<"$policies" >/dev/null; then
        aws_call write iam attach-role-policy --role-name "$ROLE_NAME" --policy-arn "$SSM_POLICY_ARN" \
            || aws_fail "cannot attach $SSM_POLICY_NAME to $ROLE_NAME"
        did attach "$SSM_POLICY_NAME"
    fi
fi
profile_doc=$(get_instance_profile) || exit 1
if [[ -z $profile_doc ]]; then
    aws_call write iam create-instance-profile --instance-profile-name "$PROFILE_NAME" "${TAGS_IAM[@]}" \
        >/dev/null || aws_fail "cannot create instance profile $PROFILE_NAME"
    did create "instance profile $PROFILE_NAME"
    if [[ $DRY_RUN -eq 0 ]]; then
        aws_call read iam wait instance-profile-exists --instance-profile-name "$PROFILE_NAME" \
            || aws_fail "instance profile $PROFILE_NAME did not appear"
    fi
    profile_roles=""
else
    profile_is_ours "$profile_doc" \
        || die "instance profile $PROFILE_NAME exists but is not tagged $TAG_KEY=$NAME; choose another --name"
    profile_roles=$(jq -r '[.InstanceProfile.Roles[].RoleName] | join(" ")' <<<"$profile_doc")
fi
if [[ -z $profile_roles ]]; then
    aws_call write iam add-role-to-instance-profile --instance-profile-name "$PROFILE_NAME" \
        --role-name "$ROLE_NAME" || aws_fail "cannot add $ROLE_NAME to $PROFILE_NAME"
    did add "$ROLE_NAME to $PROFILE_NAME"
elif [[ $profile_roles != "$ROLE_NAME" ]]; then
    die "instance profile $PROFILE_NAME holds role(s) $profile_roles, not $ROLE_NAME; choose another --name"
fi

# ------------------------------------------------------------------------------------------------------
# Network: VPC, subnet, security groups, EC2 Instance Connect Endpoint
# ------------------------------------------------------------------------------------------------------

network="SSM only (no inbound rule)"
if ((${#SSH_FROM[@]})); then
    network="SSM; tcp/22 from ${SSH_FROM[*]}"
fi
if [[ $EIC_ENDPOINT -eq 1 ]]; then
    network="${network/ only (no inbound rule)/}; tcp/22 through an EC2 Instance Connect Endpoint"
fi
log "network: $network"
EXISTING=$(find_instances) || exit 1
if [[ $FLEET -eq 0 && $(jq length <<<"$EXISTING") -gt 1 ]]; then
    die "several instances are tagged $TAG_KEY=$NAME ($(jq -r 'map(.InstanceId) | join(" ")' <<<"$EXISTING"));" \
        "terminate the extra ones or run --delete"
fi
# The endpoint goes in the instance's subnet: an existing instance's, --subnet, or a default subnet chosen
# here (and then used for the instance too).
if [[ -z $SUBNET && $EIC_ENDPOINT -eq 1 && $FLEET -eq 0 ]]; then
    SUBNET=$(jq -r '.[0].SubnetId // empty' <<<"$EXISTING")
fi
if [[ -n $SUBNET ]]; then
    out=$(aws_call read ec2 describe-subnets --subnet-ids "$SUBNET") || aws_fail "cannot describe $SUBNET"
    VPC=$(jq -r '.Subnets[0].VpcId' <<<"$out")
else
    out=$(aws_call read ec2 describe-vpcs --filters Name=isDefault,Values=true) || aws_fail "cannot list VPCs"
    VPC=$(jq -r '.Vpcs[0].VpcId // empty' <<<"$out")
    [[ -n $VPC ]] || die "$REGION has no default VPC: pass --subnet with a subnet that has internet access"
    if [[ $EIC_ENDPOINT -eq 1 || $FLEET -eq 1 ]]; then
        out=$(aws_call read ec2 describe-subnets --filters "Name=vpc-id,Values=$VPC" Name=default-for-az,Values=true) \
            || aws_fail "cannot list the subnets of $VPC"
        SUBNET=$(jq -r '[.Subnets[]] | sort_by(.AvailabilityZone) | .[0].SubnetId // empty' <<<"$out")
        [[ -n $SUBNET ]] || die "$VPC has no default subnet: pass --subnet"
        # A fleet spreads over every default subnet (one per zone); the endpoint goes in the first.
        FLEET_SUBNETS=$(jq -r '[.Subnets[]] | sort_by(.AvailabilityZone) | map(.SubnetId) | join(",")' <<<"$out")
    fi
fi
info "VPC $VPC${SUBNET:+, subnet $SUBNET}"

ensure_group "$SG_NAME" "ec2-sandbox $NAME instance: inbound as provisioned; egress http(s) and dns"
SG=$GROUP_ID
SG_DOC=$GROUP_DOC

# --eic-endpoint: tunnelled SSH comes from the endpoint's network interface (it does not preserve client
# addresses), so the instance's group admits the endpoint's group; ours lets the endpoint reach port 22 of
# the instance's group and nothing else. A VPC holds one endpoint: an existing one is reused as it is.
ENDPOINT_ID=""
EICE_SG=""
EICE_GROUPS=()
if [[ $EIC_ENDPOINT -eq 1 ]]; then
    out=$(aws_call read ec2 describe-instance-connect-endpoints --filters "Name=vpc-id,Values=$VPC" \
        "Name=state,Values=create-in-progress,create-complete,update-in-progress,update-complete,update-failed") \
        || aws_fail "cannot list the EC2 Instance Connect Endpoints of $VPC"
    endpoint=$(jq -c --arg k "$TAG_KEY" --arg v "$NAME" '[.InstanceConnectEndpoints[]]
        | (map(select(any(.Tags[]?; .Key == $k and .Value == $v))) + .) | .[0] // empty' <<<"$out")
    if [[ -n $endpoint ]] && ! jq -e --arg k "$TAG_KEY" --arg v "$NAME" \
        'any(.Tags[]?; .Key == $k and .Value == $v)' <<<"$endpoint" >/dev/null; then
        ENDPOINT_ID=$(jq -r .InstanceConnectEndpointId <<<"$endpoint")
        mapfile -t EICE_GROUPS < <(jq -r '.SecurityGroupIds[]' <<<"$endpoint")
        info "reusing $VPC's EC2 Instance Connect Endpoint $ENDPOINT_ID (not ours, left as it is): the instance" \
            "admits its groups ${EICE_GROUPS[*]}, which must allow outbound tcp/22"
        if jq -e '.PreserveClientIp' <<<"$endpoint" >/dev/null; then
            warn "$ENDPOINT_ID preserves client IPs: tunnelled traffic then comes from the callers' addresses," \
                "which only --ssh-from can admit"
        fi
    else
        ensure_group "$NAME-eice-sg" "ec2-sandbox $NAME: EC2 Instance Connect Endpoint, ssh to the instance only"
        EICE_SG=$GROUP_ID
        EICE_DOC=$GROUP_DOC
        EICE_GROUPS=("$EICE_SG")
        if [[ -n $endpoint ]]; then
            ENDPOINT_ID=$(jq -r .InstanceConnectEndpointId <<<"$endpoint")
            info "EC2 Instance Connect Endpoint $ENDPOINT_ID exists"
        fi
    fi
fi

json_array() { jq -cn '$ARGS.positional' --args "$@"; }
WANT_IN=$(jq -cn --argjson cidrs "$(json_array "${SSH_FROM[@]}")" --argjson groups "$(json_array "${EICE_GROUPS[@]}")" '
    [($cidrs[] | {IpProtocol: "tcp", FromPort: 22, ToPort: 22, IpRanges: [{CidrIp: ., Description: "ssh (--ssh-from)"}]}),
     ($groups[] | {IpProtocol: "tcp", FromPort: 22, ToPort: 22,
                   UserIdGroupPairs: [{GroupId: ., Description: "ssh through the EC2 Instance Connect Endpoint"}]})]')
WANT_OUT=$(jq -cn '[
    {IpProtocol: "tcp", FromPort: 443, ToPort: 443, IpRanges: [{CidrIp: "0.0.0.0/0", Description: "https: SSM, EIC, packages"}]},
    {IpProtocol: "tcp", FromPort: 80, ToPort: 80, IpRanges: [{CidrIp: "0.0.0.0/0", Description: "http: apt mirrors"}]},
    {IpProtocol: "udp", FromPort: 53, ToPort: 53, IpRanges: [{CidrIp: "0.0.0.0/0", Description: "dns"}]},
    {IpProtocol: "tcp", FromPort: 53, ToPort: 53, IpRanges: [{CidrIp: "0.0.0.0/0", Description: "dns"}]}]')
apply_rules "$SG" "$SG_DOC" "$WANT_IN" "$WANT_OUT"
if [[ -n $EICE_SG ]]; then
    apply_rules "$EICE_SG" "$EICE_DOC" '[]' "$(jq -cn --arg sg "$SG" '[{IpProtocol: "tcp", FromPort: 22, ToPort: 22,
        UserIdGroupPairs: [{GroupId: $sg, Description: "ssh to the ec2-sandbox instance"}]}]')"
fi
if [[ $EIC_ENDPOINT -eq 1 && -z $ENDPOINT_ID ]]; then
    out=$(aws_call write ec2 create-instance-connect-endpoint --subnet-id "$SUBNET" --security-group-ids "$EICE_SG" \
        --no-preserve-client-ip \
        --tag-specifications "ResourceType=instance-connect-endpoint,Tags=[{Key=$TAG_KEY,Value=$NAME},{Key=Name,Value=$NAME}]") \
        || aws_fail "cannot create an EC2 Instance Connect Endpoint in $SUBNET"
    if [[ $DRY_RUN -eq 1 ]]; then
        ENDPOINT_ID="<new endpoint>"
    else
        ENDPOINT_ID=$(jq -r .InstanceConnectEndpoint.InstanceConnectEndpointId <<<"$out")
    fi
    did create "EC2 Instance Connect Endpoint $ENDPOINT_ID in $SUBNET"
fi
if [[ -n $ENDPOINT_ID && $DRY_RUN -eq 0 ]]; then
    wait_until "EC2 Instance Connect Endpoint $ENDPOINT_ID to be ready" endpoint_state_is "$ENDPOINT_ID" \
        create-complete update-complete update-in-progress
    info "EC2 Instance Connect Endpoint $ENDPOINT_ID is ready"
fi

# ------------------------------------------------------------------------------------------------------
# Instance
# ------------------------------------------------------------------------------------------------------

# provision_instance: the one instance, launched, or found and repaired; waited for.
provision_instance() {
    log "instance $NAME"
    gzip -9 -n -c "$USER_DATA_FILE" >"$WORK_DIR/user-data.gz"
    user_data_bytes=$(wc -c <"$WORK_DIR/user-data.gz")
    ((user_data_bytes <= 16384)) || die "compressed user-data is $user_data_bytes bytes; EC2 accepts 16384"

    SUBNET_ARGS=()
    if [[ -n $SUBNET ]]; then
        SUBNET_ARGS=(--subnet-id "$SUBNET")
    fi

    # repair_instance INSTANCE_DOCUMENT: a rerun puts back what drifted on the instance, and says plainly what it
    # cannot put back.
    repair_instance() {
        local doc=$1 groups profile out association unencrypted
        if ! jq -e '.MetadataOptions | .HttpTokens == "required" and .HttpPutResponseHopLimit == 1' \
            <<<"$doc" >/dev/null; then
            aws_call write ec2 modify-instance-metadata-options --instance-id "$INSTANCE_ID" \
                --http-tokens required --http-put-response-hop-limit 1 --http-endpoint enabled >/dev/null \
                || aws_fail "cannot require IMDSv2 on $INSTANCE_ID"
            did require "IMDSv2 with hop limit 1 on $INSTANCE_ID"
        fi
        groups=$(jq -r '[.SecurityGroups[].GroupId] | sort | join(" ")' <<<"$doc")
        if [[ $groups != "$SG" ]]; then
            aws_call write ec2 modify-instance-attribute --instance-id "$INSTANCE_ID" --groups "$SG" \
                || aws_fail "cannot set the security groups of $INSTANCE_ID"
            did replace "the security groups of $INSTANCE_ID (${groups:-none}) with $SG"
        fi
        profile=$(jq -r '.IamInstanceProfile.Arn // empty' <<<"$doc")
        if [[ -z $profile ]]; then
            aws_call write ec2 associate-iam-instance-profile --instance-id "$INSTANCE_ID" \
                --iam-instance-profile "Name=$PROFILE_NAME" >/dev/null || aws_fail "cannot give $INSTANCE_ID $PROFILE_NAME"
            did associate "instance profile $PROFILE_NAME with $INSTANCE_ID"
        elif [[ $profile != */"$PROFILE_NAME" ]]; then
            out=$(aws_call read ec2 describe-iam-instance-profile-associations \
                --filters "Name=instance-id,Values=$INSTANCE_ID" Name=state,Values=associated) \
                || aws_fail "cannot read the instance profile association of $INSTANCE_ID"
            association=$(jq -r '.IamInstanceProfileAssociations[0].AssociationId' <<<"$out")
            aws_call write ec2 replace-iam-instance-profile-association --association-id "$association" \
                --iam-instance-profile "Name=$PROFILE_NAME" >/dev/null || aws_fail "cannot replace $profile on $INSTANCE_ID"
            did replace "instance profile $profile of $INSTANCE_ID with $PROFILE_NAME"
        fi
        out=$(aws_call read ec2 describe-volumes --filters "Name=attachment.instance-id,Values=$INSTANCE_ID") \
            || aws_fail "cannot read the volumes of $INSTANCE_ID"
        unencrypted=$(jq -r '[.Volumes[] | select(.Encrypted | not) | .VolumeId] | join(" ")' <<<"$out")
        if [[ -n $unencrypted ]]; then
            warn "cannot repair: volume(s) $unencrypted of $INSTANCE_ID are not encrypted, and EBS encryption is" \
                "only chosen for a new volume; for an encrypted instance run --delete, then this script again"
        fi
    }

    launch() {
        local attempt out
        for ((attempt = 1; attempt <= IAM_RETRY_ATTEMPTS; attempt++)); do
            if out=$(aws_call write ec2 run-instances --image-id "$AMI" --instance-type "$INSTANCE_TYPE" \
                --count 1 --iam-instance-profile "Name=$PROFILE_NAME" --security-group-ids "$SG" \
                "${SUBNET_ARGS[@]}" \
                --metadata-options "HttpTokens=required,HttpPutResponseHopLimit=1,HttpEndpoint=enabled" \
                --block-device-mappings "DeviceName=$ROOT_DEVICE,Ebs={Encrypted=true,VolumeType=gp3,VolumeSize=16,DeleteOnTermination=true}" \
                --user-data "fileb://$WORK_DIR/user-data.gz" \
                --tag-specifications \
                "ResourceType=instance,Tags=[{Key=$TAG_KEY,Value=$NAME},{Key=Name,Value=$NAME}]" \
                "ResourceType=volume,Tags=[{Key=$TAG_KEY,Value=$NAME},{Key=Name,Value=$NAME}]"); then
                if [[ $DRY_RUN -eq 1 ]]; then
                    INSTANCE_ID="i-DRYRUN"
                else
                    INSTANCE_ID=$(jq -r '.Instances[0].InstanceId' <<<"$out")
                fi
                return 0
            fi
            # IAM is eventually consistent: a new instance profile may not be usable by EC2 for a few seconds.
            if grep -qiE 'Invalid IAM Instance Profile|iamInstanceProfile' "$AWS_ERR"; then
                info "instance profile not usable yet (attempt $attempt of $IAM_RETRY_ATTEMPTS); retrying"
                sleep "$POLL_SECONDS"
                continue
            fi
            aws_fail "cannot launch the instance"
        done
        aws_fail "the instance profile $PROFILE_NAME never became usable"
    }

    if [[ $(jq length <<<"$EXISTING") -eq 1 ]]; then
        INSTANCE_ID=$(jq -r '.[0].InstanceId' <<<"$EXISTING")
        info "instance $INSTANCE_ID exists"
        state=$(jq -r '.[0].State.Name' <<<"$EXISTING")
        case $state in
            stopped)
                aws_call write ec2 start-instances --instance-ids "$INSTANCE_ID" >/dev/null \
                    || aws_fail "cannot start $INSTANCE_ID"
                did start "$INSTANCE_ID" ;;
            stopping | shutting-down) die "$INSTANCE_ID is $state; rerun when it has stopped, or run --delete" ;;
        esac
        repair_instance "$(jq -c '.[0]' <<<"$EXISTING")"
    else
        launch
        did launch "$INSTANCE_ID"
    fi

    instance_running() {
        local out
        out=$(aws_call read ec2 describe-instances --instance-ids "$INSTANCE_ID") || aws_fail "cannot read $INSTANCE_ID"
        WAIT_STATE=$(jq -r '.Reservations[0].Instances[0].State.Name' <<<"$out")
        [[ $WAIT_STATE == running ]]
    }

    ssm_online() {
        local out
        out=$(aws_call read ssm describe-instance-information \
            --filters "Key=InstanceIds,Values=$INSTANCE_ID") || aws_fail "cannot ask SSM about $INSTANCE_ID"
        WAIT_STATE=$(jq -r '.InstanceInformationList[0].PingStatus // "not registered yet"' <<<"$out")
        [[ $WAIT_STATE == Online ]]
    }

    if [[ $DRY_RUN -eq 0 ]]; then
        wait_until "$INSTANCE_ID to run" instance_running
        info "$INSTANCE_ID is running"
        if [[ $SKIP_TEST -eq 0 ]]; then
            wait_until "the SSM agent on $INSTANCE_ID to report Online" ssm_online
            info "SSM agent on $INSTANCE_ID is Online"
        fi
    else
        info "[dry-run] would poll: ec2 describe-instances --instance-ids $INSTANCE_ID (until running)"
        if [[ $SKIP_TEST -eq 0 ]]; then
            info "[dry-run] would poll: ssm describe-instance-information (until the agent is Online)"
        fi
    fi
}

if [[ $FLEET -eq 1 ]]; then
    provision_fleet
else
    provision_instance
fi

# ------------------------------------------------------------------------------------------------------
# Configuration file: merge this environment, keep every other one
# ------------------------------------------------------------------------------------------------------

log "environment '$ENVIRONMENT' in $CONFIG"
# With an SSH path the eic settings are written too: ssh_sudo, because only a runner started as root gives each
# session its own uid and falls under the metadata guard (it covers the sandbox uids, not the login user).
ssh_path=$(( ${#SSH_FROM[@]} > 0 || EIC_ENDPOINT ))
if [[ $FLEET -eq 1 ]]; then
    INSTANCE_ID="fleet $NAME"
    ENTRY=$(jq -cn --arg group "$NAME" --arg table "$TABLE_NAME" --arg region "$REGION" --arg profile "$PROFILE" \
        '{transport: "fleet", fleet_auto_scaling_group: $group, fleet_table: $table, region: $region}
         + (if $profile == "" then {} else {aws_profile: $profile} end)')
    # Keys that would make the environment name one instance, or another fleet, as well.
    DROP='["instance_id", "fleet_tags", "fleet_instance_ids"]'
else
    DROP='["fleet_auto_scaling_group", "fleet_tags", "fleet_instance_ids", "fleet_table"]'
    ENTRY=$(jq -cn --arg id "$INSTANCE_ID" --arg region "$REGION" --arg profile "$PROFILE" \
        --arg endpoint "$ENDPOINT_ID" --argjson ssh "$ssh_path" \
        '{transport: "ssm", instance_id: $id, region: $region}
         + (if $profile == "" then {} else {aws_profile: $profile} end)
         + (if $ssh == 1 then {ssh_sudo: true} else {} end)
         + (if $endpoint == "" then {} else {eic_endpoint_id: $endpoint} end)')
fi
if [[ $ssh_path -eq 1 ]]; then
    info "for SSH set \"transport\": \"eic\" in '$ENVIRONMENT'; ssh_sudo is true: the eic and ssh transports need it" \
        "for per-session uids and the metadata guard (without it the runner runs as the login user)"
fi
if [[ -z $PROFILE ]]; then
    info "no AWS profile in use: aws_profile is not written; the toolkit will use the default credential chain"
fi
if [[ -e $CONFIG ]]; then
    jq -e 'type == "object"' "$CONFIG" >/dev/null 2>&1 \
        || die "$CONFIG is not a JSON object; fix it (nothing was written)"
    current=$CONFIG
else
    current=/dev/null
fi
merged=$(jq -n --arg env "$ENVIRONMENT" --argjson entry "$ENTRY" --argjson drop "$DROP" --slurpfile cur "$current" \
    '($cur[0] // {}) as $c | $c
     | .[$env] = ((($c[$env] // {}) | if type == "object" then . else {} end | delpaths([$drop[] | [.]])) + $entry)')
if [[ $DRY_RUN -eq 1 ]]; then
    info "would write to $CONFIG: {\"$ENVIRONMENT\": $ENTRY} (merged with what is there)"
else
    config_dir=$(dirname "$CONFIG")
    mkdir -p "$config_dir"
    tmp_config=$(mktemp "$config_dir/.config.XXXXXX")
    if [[ -e $CONFIG ]]; then
        # Keeps the file's mode (cp -p, unlike GNU-only chmod --reference, works on macOS too).
        cp -p "$CONFIG" "$tmp_config"
    else
        chmod 600 "$tmp_config"
    fi
    printf '%s\n' "$merged" >"$tmp_config"
    mv -f "$tmp_config" "$CONFIG"
    info "wrote {\"$ENVIRONMENT\": $ENTRY}"
fi

# ------------------------------------------------------------------------------------------------------
# Connection test through the toolkit
# ------------------------------------------------------------------------------------------------------

if [[ $DRY_RUN -eq 1 ]]; then
    log "dry run: nothing was changed"
    exit 0
fi
if [[ $SKIP_TEST -eq 1 ]]; then
    log "ready: $INSTANCE_ID (connection test skipped; try: ec2-sandbox --config $CONFIG -E $ENVIRONMENT status)"
    exit 0
fi

if [[ -n ${EC2_SANDBOX_CLI:-} ]]; then
    read -r -a CLI <<<"$EC2_SANDBOX_CLI"
elif command -v ec2-sandbox >/dev/null 2>&1; then
    CLI=(ec2-sandbox)
elif command -v uv >/dev/null 2>&1 && [[ -f $SCRIPT_DIR/pyproject.toml ]]; then
    CLI=(uv run --project "$SCRIPT_DIR" ec2-sandbox)
else
    die "the toolkit is not installed (pip install ec2-sandbox), so the connection test cannot run; rerun with --skip-test to skip it"
fi
CLI+=(--config "$CONFIG" --environment "$ENVIRONMENT")

log "connection test"
# The instance setup may still be running when SSM comes online: wait until status reports healthy.
status_ok() {
    if "${CLI[@]}" status >"$WORK_DIR/status" 2>&1; then
        return 0
    fi
    WAIT_STATE=$(grep -m1 -E 'FAIL|error|not available' "$WORK_DIR/status" || tail -n1 "$WORK_DIR/status")
    return 1
}
if ! (WAIT_SECONDS=$STATUS_WAIT_SECONDS wait_until "ec2-sandbox status to report healthy" status_ok); then
    cat "$WORK_DIR/status" >&2
    die "the instance is not healthy (ec2-sandbox status above)"
fi
sed 's/^/    /' "$WORK_DIR/status" >&2
hello=$("${CLI[@]}" exec --runtime python3 -c 'print("hello from ec2-sandbox")' 2>"$WORK_DIR/hello.err") \
    || die "hello-world through ec2-sandbox failed: $(tr '\n' ' ' <"$WORK_DIR/hello.err")"
[[ $hello == "hello from ec2-sandbox" ]] || die "hello-world printed '$hello' instead of 'hello from ec2-sandbox'"
info "hello-world: $hello"
log "ready: $INSTANCE_ID in $REGION; environment '$ENVIRONMENT' in $CONFIG"
