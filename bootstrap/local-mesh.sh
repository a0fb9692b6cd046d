#!/usr/bin/env bash
# Runs a local three-zone agent mesh: one NATS server and three nodes
# (par-1 in fr-par-1, ams-1 in nl-ams-1, waw-1 in pl-waw-1), cluster "local".
#
#   bootstrap/local-mesh.sh up       start it (does nothing if it runs)
#   bootstrap/local-mesh.sh status   what runs, and the member list
#   bootstrap/local-mesh.sh down     stop it (the logs stay)
#   bootstrap/local-mesh.sh army [N] up, then N tasks (default 2000) through
#                                    the task board, with progress each second
#
# Environment:
#   MESH_BIN_DIR           take mesh-node and meshctl from this folder instead
#                          of building them with cargo build --release
#   MESH_LOCAL_NATS_PORT   NATS client port (default 4222)
#   MESH_LOCAL_WORKERS     worker agents per node (default 4)
#   RUST_LOG               passed to the nodes; other MESH_* variables are not
#
# State, logs and pid files live in .mesh-local/ at the repository root.
# Exit status of status: 0 all running, 1 partly running, 3 not running.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

state=$repo/.mesh-local
cluster=local
# name zone kind link-port
nodes=(
	"par-1 fr-par-1 elastic-metal 7401"
	"ams-1 nl-ams-1 instance 7402"
	"waw-1 pl-waw-1 instance 7403"
)
node_stop_timeout=10
nats_stop_timeout=5

usage() {
	sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

check_port_number() {
	if ! [[ $1 =~ ^[0-9]{1,5}$ ]] || ((10#$1 < 1 || 10#$1 > 65535)); then
		die "MESH_LOCAL_NATS_PORT must be a TCP port number (1-65535), not '$1'"
	fi
}

# ---------------------------------------------------------------- processes

# alive PID MARKER: whether PID runs and its command line holds MARKER, so
# that a pid reused by another program after a reboot is never taken for ours.
alive() {
	local pid=$1 marker=$2 cmdline
	kill -0 "$pid" 2>/dev/null || return 1
	# A zombie or a process of another user has no readable command line.
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[[ $cmdline == *"$marker"* ]]
}

nats_marker() { printf '%s' " -sd $state/nats"; }
node_marker() { printf '%s' " --data-dir $state/$1 "; }

# recorded_pid FILE MARKER: the pid FILE records if that process still
# runs; removes FILE (stale) otherwise.
recorded_pid() {
	local file=$1 marker=$2 pid
	[ -f "$file" ] || return 1
	pid=$(head -n 1 "$file" 2>/dev/null || true)
	if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" "$marker"; then
		printf '%s\n' "$pid"
		return 0
	fi
	rm -f "$file"
	return 1
}

nats_pid() { recorded_pid "$state/nats.pid" "$(nats_marker)"; }
node_pid() { recorded_pid "$state/$1.pid" "$(node_marker "$1")"; }

# Runs a program in the background, detached from this terminal (its own
# session: no SIGHUP when the terminal closes, no SIGINT on Ctrl-C here),
# with stdout and stderr appended to LOG. Sets launched_pid.
launch() {
	local log=$1
	shift
	local detach=()
	if command -v setsid >/dev/null 2>&1; then
		detach=(setsid)
	fi
	(
		# The nodes take their settings from flags only: a MESH_CONFIG or
		# MESH_ADVERTISE of this shell must not leak into them.
		while IFS= read -r var; do
			case $var in MESH_*) unset "$var" ;; esac
		done < <(compgen -e)
		# mesh-node colours its log lines even into a file; NO_COLOR stops it.
		export NO_COLOR=1
		exec 9>&- # the lock stays with this script
		# setsid execs without forking here (no job control: this
		# subshell leads no process group), so the pid stays the same.
		exec "${detach[@]}" "$@" >>"$log" 2>&1 </dev/null
	) &
	launched_pid=$!
}

# shown PATH: PATH as the user can type it from here (relative to the
# repository when that is the current folder).
shown() {
	if [ "$PWD" = "$repo" ]; then
		printf '%s' "${1#"$repo"/}"
	else
		printf '%s' "$1"
	fi
}

log_header() {
	printf '=== %s: started by local-mesh.sh up\n' "$(date '+%Y-%m-%d %H:%M:%S')" >>"$1"
}

# show_log LOG FROM_LINE: the lines LOG got since FROM_LINE, the last 20.
show_log() {
	say "--- $1 (last lines) ---" >&2
	tail -n "+$(($2 + 1))" "$1" 2>/dev/null | tail -n 20 >&2 || true
	say "---" >&2
}

line_count() {
	if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi
}

# wait_gone SECONDS MARKER_FN PID:NAME...: waits until every PID has exited
# (MARKER_FN NAME gives the marker of its command line), at most SECONDS;
# prints the PID:NAME still running then.
wait_gone() {
	local timeout=$1 marker_fn=$2
	shift 2
	local deadline=$((SECONDS + timeout)) left pid name
	while :; do
		left=()
		for pid in "$@"; do
			name=${pid#*:}
			if alive "${pid%%:*}" "$($marker_fn "$name")"; then
				left+=("$pid")
			fi
		done
		if [ ${#left[@]} -eq 0 ] || ((SECONDS >= deadline)); then
			break
		fi
		sleep 0.1
	done
	if [ ${#left[@]} -gt 0 ]; then
		printf '%s\n' "${left[@]}"
	fi
}

# ---------------------------------------------------------------- ports

port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

require_free_port() {
	local port=$1 what=$2 hint=${3:-} who=""
	port_in_use "$port" || return 0
	if command -v ss >/dev/null 2>&1; then
		who=$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -n 1 || true)
	fi
	die "port $port on 127.0.0.1, needed by $what, is already taken by another program${who:+ ($who)}; stop that program${hint:+, or $hint}"
}

# ---------------------------------------------------------------- binaries

default_bin_dir() {
	local target=${CARGO_TARGET_DIR:-$repo/target}
	case $target in /*) ;; *) target=$repo/$target ;; esac
	printf '%s\n' "$target/release"
}

# Sets bin_dir, mesh_node and meshctl; builds them unless MESH_BIN_DIR says
# where they are.
prepare_binaries() {
	if [ -n "${MESH_BIN_DIR:-}" ]; then
		bin_dir=$(cd "$MESH_BIN_DIR" 2>/dev/null && pwd) ||
			die "MESH_BIN_DIR=$MESH_BIN_DIR is not a folder"
	else
		command -v cargo >/dev/null 2>&1 ||
			die "cargo not found: install Rust with rustup (https://rustup.rs), or set MESH_BIN_DIR to a folder holding mesh-node and meshctl"
		say "building mesh-node and meshctl: cargo build --release --bins -p mesh"
		(cd "$repo" && cargo build --release --bins -p mesh) ||
			die "cargo build failed (see above)"
		bin_dir=$(default_bin_dir)
	fi
	mesh_node=$bin_dir/mesh-node
	meshctl=$bin_dir/meshctl
	local bin
	for bin in "$mesh_node" "$meshctl"; do
		[ -x "$bin" ] || die "$bin is missing or not executable${MESH_BIN_DIR:+ (check MESH_BIN_DIR)}"
	done
	printf '%s\n' "$bin_dir" >"$state/bin-dir"
}

# Sets meshctl for status: MESH_BIN_DIR, else what the last up used, else
# the release build; empty if none is there.
find_meshctl() {
	local dir
	if [ -n "${MESH_BIN_DIR:-}" ]; then
		dir=$MESH_BIN_DIR
	elif [ -f "$state/bin-dir" ]; then
		dir=$(head -n 1 "$state/bin-dir")
	else
		dir=$(default_bin_dir)
	fi
	meshctl=$dir/meshctl
	if [ ! -x "$meshctl" ]; then
		meshctl=""
	fi
}

# Sets nats_server to a nats-server >= 2.10, installing one if needed.
prepare_nats_server() {
	"$here/install-deps.sh" nats
	nats_server=$(find_nats_server) || die "no nats-server >= $NATS_MIN_VERSION found after install-deps.sh"
	# Run the real binary rather than a pyenv shim: a shim can stay in
	# between as a parent process, and then the pid recorded (the shim's)
	# would not be the server's, so down would leave the server running.
	if command -v pyenv >/dev/null 2>&1 && [[ $nats_server == "$(pyenv root)/shims/"* ]]; then
		nats_server=$(pyenv which nats-server 2>/dev/null) || die "pyenv cannot resolve its nats-server shim"
	fi
}

# ---------------------------------------------------------------- NATS

# The NATS port: the one the running server was started with, else
# MESH_LOCAL_NATS_PORT, else 4222.
set_nats_port() {
	if nats_pid >/dev/null && [ -f "$state/nats.port" ]; then
		nats_port=$(head -n 1 "$state/nats.port")
		if [ -n "${MESH_LOCAL_NATS_PORT:-}" ] && [ "$MESH_LOCAL_NATS_PORT" != "$nats_port" ]; then
			warn "NATS already runs on port $nats_port: ignoring MESH_LOCAL_NATS_PORT=$MESH_LOCAL_NATS_PORT until down"
		fi
	else
		nats_port=${MESH_LOCAL_NATS_PORT:-4222}
	fi
	check_port_number "$nats_port"
	nats_url=nats://127.0.0.1:$nats_port
}

start_nats() {
	local log=$state/nats.log from deadline pid
	mkdir -p "$state/nats"
	from=$(line_count "$log")
	log_header "$log"
	from=$((from + 1))
	launch "$log" "$nats_server" -a 127.0.0.1 -p "$nats_port" -js -sd "$state/nats"
	pid=$launched_pid
	printf '%s\n' "$pid" >"$state/nats.pid"
	printf '%s\n' "$nats_port" >"$state/nats.port"
	# Ready when this run's part of the log says so; at most ~10 s.
	deadline=$((SECONDS + 10))
	until awk -v from="$from" 'NR > from && /Server is ready/ { found = 1; exit } END { exit !found }' "$log"; do
		if ! alive "$pid" "$(nats_marker)"; then
			rm -f "$state/nats.pid"
			show_log "$log" "$from"
			die "nats-server exited while starting (its log is above)"
		fi
		if ((SECONDS >= deadline)); then
			kill -TERM "$pid" 2>/dev/null || true
			rm -f "$state/nats.pid"
			show_log "$log" "$from"
			die "nats-server was not ready within 10 s (its log is above); stopped it"
		fi
		sleep 0.1
	done
	say "nats-server   running, pid $pid, $nats_url (log: $(shown "$log"))"
}

# ---------------------------------------------------------------- nodes

make_secret() {
	local secret=$state/secret tmp
	if [ -s "$secret" ]; then
		chmod 600 "$secret"
		return 0
	fi
	tmp=$(umask 077 && mktemp "$state/.secret.XXXXXX")
	head -c 32 /dev/urandom | base64 >"$tmp"
	chmod 600 "$tmp"
	mv -f "$tmp" "$secret"
	say "created the cluster secret $(shown "$secret") (mode 600)"
}

start_node() {
	local name=$1 zone=$2 kind=$3 port=$4 log=$state/$1.log
	mkdir -p "$state/$name"
	node_from[$name]=$(($(line_count "$log") + 1))
	log_header "$log"
	launch "$log" "$mesh_node" \
		--cluster "$cluster" --name "$name" --zone "$zone" --kind "$kind" \
		--nats "$nats_url" --listen "127.0.0.1:$port" \
		--data-dir "$state/$name" --secret-file "$state/secret" --insecure \
		--snapshots "file://$state/snapshots" \
		--workers "${MESH_LOCAL_WORKERS:-4}"
	printf '%s\n' "$launched_pid" >"$state/$name.pid"
	say "mesh-node     $name started, pid $launched_pid, zone $zone, $kind, link 127.0.0.1:$port (log: $(shown "$log"))"
}

# members_json: the member list as one node sees it, or fails.
members_json() {
	"$meshctl" --nats "$nats_url" --cluster "$cluster" members --json --timeout 1s 2>&1
}

# Waits (at most ~15 s) until the member list holds all three nodes, then
# for the rest of that time until they are linked.
wait_for_members() {
	local deadline=$((SECONDS + 15)) out="" missing entry name unlinked
	while :; do
		for entry in "${nodes[@]}"; do
			read -r name _ <<<"$entry"
			if ! node_pid "$name" >/dev/null; then
				show_log "$state/$name.log" "${node_from[$name]:-0}"
				die "node $name exited while starting (its log is above); bootstrap/local-mesh.sh status shows what still runs, down stops it"
			fi
		done
		missing=() unlinked=1
		if out=$(members_json); then
			for entry in "${nodes[@]}"; do
				read -r name _ <<<"$entry"
				if ! grep -q "\"name\": *\"$name\"" <<<"$out"; then
					missing+=("$name")
				fi
			done
			if ! grep -q '"linked": *false' <<<"$out"; then
				unlinked=0
			fi
		else
			missing=(all)
		fi
		if [ ${#missing[@]} -eq 0 ] && [ "$unlinked" -eq 0 ]; then
			say "members       all 3 nodes joined and linked"
			return 0
		fi
		if ((SECONDS >= deadline)); then
			break
		fi
		sleep 0.2
	done
	if [ ${#missing[@]} -eq 0 ]; then
		warn "all 3 nodes are members, but not all linked yet after 15 s; calls still work, check the node logs in $(shown "$state")/"
		return 0
	fi
	say "$out" >&2
	die "after 15 s the member list still lacks: ${missing[*]} (meshctl's last answer is above; node logs are in $state/); bootstrap/local-mesh.sh down stops what runs"
}

summary() {
	local ctl=meshctl nats_flag="" stop
	if [ "$(command -v meshctl 2>/dev/null || true)" != "$meshctl" ]; then
		ctl=$meshctl
	fi
	if [ "$nats_port" != 4222 ]; then
		nats_flag=" --nats $nats_url"
	fi
	stop=$(shown "$repo/bootstrap/local-mesh.sh")
	cat <<EOF

The local mesh is up: cluster "$cluster", nodes par-1 (fr-par-1), ams-1 (nl-ams-1),
waw-1 (pl-waw-1), NATS at $nats_url. Logs: $state/*.log

Talk to it with meshctl ($meshctl):
EOF
	if [ "$ctl" != meshctl ]; then
		# shellcheck disable=SC2016 # $PATH is for the reader's shell
		printf '  (or add its folder to PATH:  export PATH="%s:$PATH"  and type just meshctl)\n' "$bin_dir"
	fi
	cat <<EOF
  $ctl$nats_flag --cluster $cluster members
  $ctl$nats_flag --cluster $cluster call counter/alice '{"add": 5}'
  $ctl$nats_flag --cluster $cluster call echo/hi '{"hello":"world"}'
  $ctl$nats_flag --cluster $cluster agents

Status: $stop status
Stop:   $stop down
EOF
}

# ---------------------------------------------------------------- commands

lock() {
	mkdir -p "$state"
	if command -v flock >/dev/null 2>&1; then
		exec 9>"$state/.lock"
		flock -w 30 9 || die "another local-mesh.sh has held $state/.lock for 30 s"
	fi
}

cmd_up() {
	lock
	set_nats_port
	declare -gA node_from=()
	local entry name zone kind port pid to_start=() nats_running=0 running=()
	if pid=$(nats_pid); then
		nats_running=1
		running+=("nats-server (pid $pid)")
	fi
	for entry in "${nodes[@]}"; do
		read -r name zone kind port <<<"$entry"
		if pid=$(node_pid "$name"); then
			running+=("$name (pid $pid)")
		else
			to_start+=("$entry")
		fi
	done
	if [ "$nats_running" -eq 1 ] && [ ${#to_start[@]} -eq 0 ]; then
		say "The local mesh is already running: ${running[*]}. Nothing started."
		bin_dir=$(head -n 1 "$state/bin-dir" 2>/dev/null || default_bin_dir)
		meshctl=$bin_dir/meshctl
		summary
		return 0
	fi
	if [ ${#running[@]} -gt 0 ]; then
		say "already running: ${running[*]}; starting the rest"
	fi

	# Check every port before starting anything.
	if [ "$nats_running" -eq 0 ]; then
		require_free_port "$nats_port" "nats-server" "choose another port with MESH_LOCAL_NATS_PORT"
	fi
	for entry in "${to_start[@]}"; do
		read -r name zone kind port <<<"$entry"
		require_free_port "$port" "node $name"
	done

	if [ "$nats_running" -eq 0 ]; then
		prepare_nats_server
	fi
	prepare_binaries
	make_secret
	if [ "$nats_running" -eq 0 ]; then
		start_nats
	fi
	for entry in "${to_start[@]}"; do
		read -r name zone kind port <<<"$entry"
		start_node "$name" "$zone" "$kind" "$port"
	done
	wait_for_members
	summary
}

# stop_group MARKER_FN TIMEOUT PID_FN NAME...: SIGTERM to each NAME that
# runs (PID_FN NAME gives its recorded pid), waits up to TIMEOUT seconds,
# then SIGKILL to what is left. Only pids from our pid files are signalled.
stop_group() {
	local marker_fn=$1 timeout=$2 pid_fn=$3
	shift 3
	local name pid targets=() left
	for name in "$@"; do
		if pid=$($pid_fn "$name"); then
			kill -TERM "$pid" 2>/dev/null || true
			targets+=("$pid:$name")
			stopped+=("$name")
		fi
	done
	if [ ${#targets[@]} -eq 0 ]; then
		return 0
	fi
	say "stopping ${targets[*]#*:} (SIGTERM, up to $timeout s)"
	while IFS= read -r left; do
		[ -n "$left" ] || continue
		warn "${left#*:} (pid ${left%%:*}) did not stop within $timeout s: sending SIGKILL"
		kill -KILL "${left%%:*}" 2>/dev/null || true
	done < <(wait_gone "$timeout" "$marker_fn" "${targets[@]}")
	for name in "$@"; do
		if [ "$name" = nats-server ]; then
			rm -f "$state/nats.pid" "$state/nats.port"
		else
			rm -f "$state/$name.pid"
		fi
	done
}

nats_pid_by_name() { nats_pid; }
nats_marker_by_name() { nats_marker; }

cmd_down() {
	lock
	local entry name names=()
	stopped=()
	for entry in "${nodes[@]}"; do
		read -r name _ <<<"$entry"
		names+=("$name")
	done
	# Nodes first: they say goodbye over NATS.
	stop_group node_marker "$node_stop_timeout" node_pid "${names[@]}"
	stop_group nats_marker_by_name "$nats_stop_timeout" nats_pid_by_name nats-server
	if [ ${#stopped[@]} -eq 0 ]; then
		say "The local mesh is not running: nothing to stop."
	else
		say "The local mesh is stopped (logs kept in $state/)."
	fi
}

cmd_status() {
	local entry name zone kind port pid up=0 total=0 nats_up=0
	set_nats_port
	total=$((total + 1))
	if pid=$(nats_pid); then
		up=$((up + 1))
		nats_up=1
		say "nats-server   running  pid $pid  $nats_url"
	else
		say "nats-server   stopped"
	fi
	for entry in "${nodes[@]}"; do
		read -r name zone kind port <<<"$entry"
		total=$((total + 1))
		if pid=$(node_pid "$name"); then
			up=$((up + 1))
			say "$(printf '%-13s' "$name") running  pid $pid  $zone $kind 127.0.0.1:$port"
		else
			say "$(printf '%-13s' "$name") stopped"
		fi
	done
	if [ "$nats_up" -eq 1 ]; then
		find_meshctl
		if [ -n "$meshctl" ]; then
			say ""
			say "$meshctl --nats $nats_url --cluster $cluster members"
			"$meshctl" --nats "$nats_url" --cluster "$cluster" members --timeout 2s ||
				warn "meshctl members failed (exit $?)"
		else
			warn "meshctl not found (set MESH_BIN_DIR): cannot list the members"
		fi
	fi
	if [ "$up" -eq "$total" ]; then
		return 0
	elif [ "$up" -gt 0 ]; then
		return 1
	fi
	return 3
}

# The army at work: a stream of tasks through board/main, run by the
# nodes' workers, with one progress line per second until all are done.
cmd_army() {
	local count=${1:-2000}
	[[ $count =~ ^[1-9][0-9]{0,6}$ ]] || die "army takes a task count (1-9999999), not '$count'"
	cmd_up
	# The mesh runs; other local-mesh.sh commands may go ahead meanwhile.
	exec 9>&- || true
	find_meshctl
	[ -n "$meshctl" ] || die "meshctl not found (set MESH_BIN_DIR)"
	local ctl=("$meshctl" --nats "$nats_url" --cluster "$cluster") sleeps=$((count * 4 / 5))
	say ""
	say "submitting $count tasks: $sleeps sleep (200 ms) and $((count - sleeps)) sha256 (CPU),"
	say "about 60 per second. Kill a node meanwhile (kill -9 \$(cat $(shown "$state")/ams-1.pid))"
	say "and watch its zone stop while the others carry on; Ctrl-C stops watching."
	say ""
	local stamp
	stamp=$(date +%s)
	local pids=() pid running=1
	if [ "$sleeps" -gt 0 ]; then
		"${ctl[@]}" tasks submit sleep '{"ms": 200}' --id "sleep-$stamp" \
			--count "$sleeps" --rate 48 >/dev/null &
		pids+=("$!")
	fi
	"${ctl[@]}" tasks submit sha256 '{"data": "army", "rounds": 200000}' \
		--id "sha-$stamp" --count $((count - sleeps)) --rate 12 >/dev/null &
	pids+=("$!")
	# The pids are expanded now: the trap runs after this function returns,
	# when its locals are gone.
	# shellcheck disable=SC2064
	trap "kill ${pids[*]} 2>/dev/null || true" EXIT
	# Wait for the first submissions, so the board has work before watching.
	sleep 1
	# A submitter may pause through a failover while the board is idle:
	# watch until the submitters are done and the board is idle.
	while ((running)); do
		"${ctl[@]}" tasks watch --until-idle
		running=0
		for pid in "${pids[@]}"; do
			if kill -0 "$pid" 2>/dev/null; then
				running=1
			fi
		done
	done
	wait "${pids[@]}" 2>/dev/null || true
	trap - EXIT
	"${ctl[@]}" tasks stats
}

case ${1:-} in
up) cmd_up ;;
army) cmd_army "${2:-}" ;;
down) cmd_down ;;
status) cmd_status ;;
-h | --help | help)
	usage
	;;
*)
	usage >&2
	exit 2
	;;
esac
