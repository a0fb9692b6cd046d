# shellcheck shell=bash
# Helpers shared by install-deps.sh and local-mesh.sh. Source it; do not run it.

# The oldest nats-server the mesh works with (JetStream API of 2.10).
NATS_MIN_VERSION=2.10

say() { printf '%s\n' "$*"; }
warn() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
	warn "error: $*"
	exit 1
}

# version_ge A B: whether version A is at least version B.
version_ge() {
	[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# The folders where pip puts the programs of the python3 on PATH: the
# user scheme (pip --user) and the interpreter's own (a venv, pyenv, ...).
python_script_dirs() {
	command -v python3 >/dev/null 2>&1 || return 0
	python3 - <<'EOF' 2>/dev/null || true
import os, site, sysconfig
seen = []
for d in (os.path.join(site.getuserbase(), "bin"), sysconfig.get_path("scripts")):
    if d and d not in seen:
        seen.append(d)
        print(d)
EOF
}

# Every executable called NAME: first those on PATH, in PATH order, then
# those in pip's script folders (which may not be on PATH).
tool_candidates() {
	local name=$1 dir
	type -aP "$name" 2>/dev/null || true
	while IFS= read -r dir; do
		if [ -x "$dir/$name" ]; then
			printf '%s\n' "$dir/$name"
		fi
	done < <(python_script_dirs)
}

# nats_version BIN: the version BIN reports, such as 2.15.1; empty if it
# does not run.
nats_version() {
	"$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n 1 || true
}

# The first nats-server of at least NATS_MIN_VERSION, on PATH or where pip
# puts programs; fails if there is none.
find_nats_server() {
	local bin version
	while IFS= read -r bin; do
		version=$(nats_version "$bin")
		if [ -n "$version" ] && version_ge "$version" "$NATS_MIN_VERSION"; then
			printf '%s\n' "$bin"
			return 0
		fi
	done < <(tool_candidates nats-server)
	return 1
}

# weed_version BIN: the SeaweedFS release BIN reports, such as 4.48.
weed_version() {
	"$1" version 2>/dev/null | awk '/^version/ { print $3; exit }' || true
}

# The first weed that runs, on PATH or where pip puts programs.
find_weed() {
	local bin
	while IFS= read -r bin; do
		if [ -n "$(weed_version "$bin")" ]; then
			printf '%s\n' "$bin"
			return 0
		fi
	done < <(tool_candidates weed)
	return 1
}

# path_note BIN: empty when typing BIN's name runs BIN; otherwise a note
# saying how to reach it.
path_note() {
	local bin=$1 name dir first
	name=${bin##*/}
	dir=${bin%/*}
	first=$(command -v "$name" 2>/dev/null || true)
	if [ "$first" = "$bin" ]; then
		return 0
	fi
	# shellcheck disable=SC2016 # the note's $PATH is for the reader's shell
	case ":$PATH:" in
	*":$dir:"*) printf ' (on PATH, but "%s" runs %s first)' "$name" "$first" ;;
	*) printf ' (not on PATH; add it with: export PATH="%s:$PATH")' "$dir" ;;
	esac
}
