#!/usr/bin/env bash
# Runs each fuzz target for a while (not in CI), then copies any crashing
# input into fuzz/regressions/<target>/, which tests/security.rs replays on
# every test run.
#
#   fuzz/run.sh [SECONDS] [TARGET...]   each target for SECONDS (default 300)
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# MESH_FUZZ_SANITIZER picks cargo fuzz's sanitizer (default none: the
# targets are safe Rust, and address sanitizing would slow them down and
# rebuild every dependency; "address" finds bugs in C dependencies too).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
seconds=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(codec gateway snapshot config)
sanitizer=${MESH_FUZZ_SANITIZER:-none}
cd "$here"
command -v cargo-fuzz >/dev/null || {
	echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
	exit 2
}
status=0
for target in "${targets[@]}"; do
	mkdir -p "corpus/$target"
	cp -n "regressions/$target"/* "corpus/$target/" 2>/dev/null || true
	echo "fuzz/run.sh: $target for ${seconds}s"
	if ! cargo +nightly fuzz run -s "$sanitizer" "$target" "corpus/$target" -- \
		-max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536 -timeout=10; then
		status=1
	fi
	for crash in artifacts/"$target"/*; do
		[ -e "$crash" ] || continue
		cp "$crash" "regressions/$target/"
		echo "fuzz/run.sh: $target: kept $(basename "$crash") as a regression input"
	done
done
exit $status
