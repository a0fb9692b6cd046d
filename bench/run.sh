#!/usr/bin/env bash
# Runs agent-mesh's benchmarks and leaves their reports in bench/results/.
#
#   bench/run.sh                  build the release binaries, then every bench
#   bench/run.sh compare state    only some: compare, state, failover
#
# 1. Builds the release binaries (`cargo build --release --bins -p mesh`);
#    the failover bench starts `mesh-node` processes from that build.
# 2. For the state bench, when SeaweedFS (`weed`, or $WEED_BIN) is on PATH,
#    starts `weed mini` with every port on 127.0.0.1 and one bucket, and
#    exports BENCH_S3_ENDPOINT, BENCH_S3_BUCKET, AWS_ACCESS_KEY_ID and
#    AWS_SECRET_ACCESS_KEY, so the bench also measures snapshots to S3.
#    Without it, only the local file system is measured.
# 3. Runs `cargo bench -p mesh --bench compare` (the mesh side by side
#    with raw ractor_cluster, NATS and Erlang/OTP; when `erl` is missing,
#    installs erlang-nox first with `bootstrap/install-deps.sh erlang`),
#    then `--bench state`, then `--bench failover`.
# 4. Writes BENCHMARKS.md at the repository's root from the reports in
#    bench/results/ (those of benches not run this time are kept).
#
# A bench that fails does not stop the next one; the script then exits
# with 1. Builds and benches run under `nice -n 10` (BENCH_NICE changes
# it), as the machine is shared. Cargo's own variables (CARGO_TARGET_DIR)
# and the benches' (BENCH_QUICK, BENCH_REPS, BENCH_TRIALS, ...) pass through.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
# shellcheck source-path=SCRIPTDIR source=../bootstrap/lib.sh
. "$root/bootstrap/lib.sh"

# How long `weed mini` may take to serve the bucket (it takes about 2 s).
WEED_READY_SECONDS=60
# How long `weed` may take to stop on SIGTERM (it takes about 2.5 s).
WEED_STOP_SECONDS=15
# Printed by `weed mini` once every component runs and the bucket exists.
WEED_BANNER='All enabled components are running and ready to use'
# Logged (with -logtostderr) for each Unix socket a gRPC server opens.
WEED_SOCKET_LINE='gRPC also listening on Unix socket '
# The bucket and credentials of the local S3 store; they guard nothing.
S3_BUCKET=bench
S3_ACCESS_KEY=mesh-bench-access
S3_SECRET_KEY=mesh-bench-secret-0123456789

usage() {
	sed -n '2,25s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

run_compare=0 run_state=0 run_failover=0
if [ $# -eq 0 ]; then
	run_compare=1 run_state=1 run_failover=1
fi
for arg in "$@"; do
	case $arg in
	compare) run_compare=1 ;;
	state) run_state=1 ;;
	failover) run_failover=1 ;;
	-h | --help | help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown bench '$arg' (expected compare, state or failover)"
		;;
	esac
done

nice_level=${BENCH_NICE:-10}
weed_pid='' weed_dir='' weed_grpc_ports=()

# Stops weed by its pid (SIGTERM, a bounded wait, then SIGKILL) and removes
# the Unix sockets it leaves in /tmp, whatever $TMPDIR says.
stop_weed() {
	[ -n "$weed_pid" ] || return 0
	local waited=0 port path
	kill -TERM "$weed_pid" 2>/dev/null || true
	while kill -0 "$weed_pid" 2>/dev/null; do
		if [ "$waited" -ge $((WEED_STOP_SECONDS * 10)) ]; then
			warn "weed ignored SIGTERM for ${WEED_STOP_SECONDS}s; killing it"
			kill -KILL "$weed_pid" 2>/dev/null || true
			break
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	wait "$weed_pid" 2>/dev/null || true
	weed_pid=''
	for port in "${weed_grpc_ports[@]}"; do
		rm -f /tmp/seaweedfs-*-grpc-"$port".sock
	done
	if [ -f "$weed_dir/weed.log" ]; then
		grep -o "$WEED_SOCKET_LINE.*\.sock" "$weed_dir/weed.log" |
			while IFS= read -r line; do
				path=${line#"$WEED_SOCKET_LINE"}
				rm -f "$path"
			done || true
	fi
}

cleanup() {
	stop_weed
	if [ -n "$weed_dir" ]; then
		rm -rf "$weed_dir"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The weed binary: $WEED_BIN, or weed on PATH; empty if there is none. A
# pyenv shim is resolved to the binary it runs.
weed_bin() {
	local bin=${WEED_BIN:-}
	if [ -z "$bin" ]; then
		bin=$(command -v weed 2>/dev/null) || return 0
	fi
	if [[ $bin == */shims/weed ]] && command -v pyenv >/dev/null 2>&1; then
		bin=$(pyenv which weed 2>/dev/null) || bin=${WEED_BIN:-$(command -v weed)}
	fi
	printf '%s\n' "$bin"
}

# Prints ten distinct free loopback ports, the last two being P and
# P + 10000: weed's built-in worker dials the admin gRPC port there.
free_ports() {
	python3 - <<'EOF'
import socket
held, ports = [], []
def bind(port=0):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    held.append(s)
    return s.getsockname()[1]
for _ in range(8):
    ports.append(bind())
for _ in range(1000):
    admin = bind()
    try:
        bind(admin + 10000)
    except (OSError, OverflowError):
        continue
    ports += [admin, admin + 10000]
    break
else:
    raise SystemExit("no free port pair P, P + 10000")
print(" ".join(map(str, ports)))
EOF
}

# http_code PORT PATH: the HTTP status of GET PATH on a loopback port.
http_code() {
	curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$1$2" 2>/dev/null || true
}

# Starts weed mini with one bucket and exports the state bench's S3
# variables; returns 1 (after a warning) if it does not come up.
start_weed() {
	local bin=$1 master master_grpc volume volume_grpc filer filer_grpc s3 s3_grpc
	local admin admin_grpc waited=0
	read -r master master_grpc volume volume_grpc filer filer_grpc s3 s3_grpc admin admin_grpc \
		< <(free_ports)
	weed_grpc_ports=("$master_grpc" "$volume_grpc" "$filer_grpc" "$s3_grpc" "$admin_grpc")
	weed_dir=$(mktemp -d "${TMPDIR:-/tmp}/mesh-bench-weed-XXXXXX")
	mkdir "$weed_dir/data" "$weed_dir/tmp"
	cat >"$weed_dir/s3.json" <<EOF
{"identities": [{"name": "bench",
  "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
	# -logtostderr (a global flag, so before `mini`) keeps glog's files out
	# of $TMPDIR; TMPDIR itself points into the run's folder.
	TMPDIR="$weed_dir/tmp" "$bin" -logtostderr mini \
		-dir="$weed_dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
		-master.port="$master" -master.port.grpc="$master_grpc" \
		-volume.port="$volume" -volume.port.grpc="$volume_grpc" \
		-filer.port="$filer" -filer.port.grpc="$filer_grpc" \
		-s3.port="$s3" -s3.port.grpc="$s3_grpc" \
		-admin.port="$admin" -admin.port.grpc="$admin_grpc" \
		-admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
		-master.telemetry=false -s3.autoCreateBucket=false \
		-s3.config="$weed_dir/s3.json" -bucket="$S3_BUCKET" -volume.preStopSeconds=0 \
		-filer.localSocket="$weed_dir/filer.sock" -s3.localSocket="$weed_dir/s3.sock" \
		</dev/null >"$weed_dir/weed.log" 2>&1 &
	weed_pid=$!

	# The S3 port answers before the bucket exists: wait for the banner,
	# then for the bucket's folder on the filer.
	until grep -q "$WEED_BANNER" "$weed_dir/weed.log" &&
		[ "$(http_code "$s3" /)" != 000 ] &&
		[ "$(http_code "$filer" "/buckets/$S3_BUCKET/")" = 200 ]; do
		if ! kill -0 "$weed_pid" 2>/dev/null || [ "$waited" -ge $((WEED_READY_SECONDS * 10)) ]; then
			warn "weed did not come up; the state bench runs without S3. End of its log:"
			tail -n 20 "$weed_dir/weed.log" >&2
			stop_weed
			return 1
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	export BENCH_S3_ENDPOINT="http://127.0.0.1:$s3" BENCH_S3_BUCKET=$S3_BUCKET
	export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
	say "weed mini (pid $weed_pid) serves bucket $S3_BUCKET at $BENCH_S3_ENDPOINT"
}

cd "$root"
failed=()

say "building the release binaries…"
nice -n "$nice_level" cargo build --release --bins -p mesh

if [ -z "${NATS_SERVER_BIN:-}" ] && bin=$(find_nats_server); then
	export NATS_SERVER_BIN=$bin
fi

if [ "$run_compare" = 1 ]; then
	if ! command -v erl >/dev/null 2>&1 || ! command -v erlc >/dev/null 2>&1; then
		say "Erlang/OTP is missing: installing it (bootstrap/install-deps.sh erlang)…"
		"$root/bootstrap/install-deps.sh" erlang
	fi
	say "running the comparison bench…"
	nice -n "$nice_level" cargo bench -p mesh --bench compare || failed+=(compare)
fi

if [ "$run_state" = 1 ]; then
	weed=$(weed_bin)
	if [ -n "$weed" ]; then
		start_weed "$weed" || true
	else
		say "weed is not on PATH: the state bench measures the local file system only"
	fi
	say "running the state bench…"
	nice -n "$nice_level" cargo bench -p mesh --bench state || failed+=(state)
	stop_weed
	unset BENCH_S3_ENDPOINT BENCH_S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
fi

if [ "$run_failover" = 1 ]; then
	say "running the failover bench…"
	nice -n "$nice_level" cargo bench -p mesh --bench failover || failed+=(failover)
fi

# Puts the reports in bench/results/ together, one heading level down.
write_benchmarks() {
	local out=$root/BENCHMARKS.md report
	{
		cat <<'EOF'
# agent-mesh benchmarks

Written by `bench/run.sh` from the reports in `bench/results/`; each part
names the machine, revision and command it was measured with. The machine
is shared with other work, so compare ratios measured in the same run, not
absolute figures across runs.

Reproduce (Debian; `bootstrap/install-deps.sh nats seaweedfs erlang`
first, or let `bench/run.sh` install Erlang/OTP when it is missing):

```sh
bench/run.sh                    # every bench, then this file
bench/run.sh compare            # only the side-by-side comparison
BENCH_QUICK=1 bench/run.sh      # small sizes, for a quick look
```
EOF
		for report in compare state failover; do
			[ -f "$here/results/$report.md" ] || continue
			printf '\n'
			sed 's/^#/##/' "$here/results/$report.md"
		done
	} >"$out"
	say "wrote $out"
}
write_benchmarks

if [ ${#failed[@]} -gt 0 ]; then
	die "failed: ${failed[*]} (see above); reports of the others are in bench/results/"
fi
say "reports: bench/results/"
