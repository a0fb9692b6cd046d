#!/usr/bin/env bash
# Checks the alert rules with promtool (syntax, PromQL, templates) and the
# dashboard for valid JSON. Not part of CI: the metric names both use are
# checked against a live node by tests/operations.rs.
#
# promtool comes from PATH, or from Debian's `prometheus` package, unpacked
# (not installed: no service is set up) into ~/.cache/mesh-promtool.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/mesh-promtool
  promtool=$cache/usr/bin/promtool
  if [ ! -x "$promtool" ]; then
    echo "check: fetching promtool from Debian's prometheus package into $cache"
    command -v apt-get >/dev/null || { echo "check: no promtool and no apt-get" >&2; exit 1; }
    mkdir -p "$cache"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) || {
      echo "check: apt-get download prometheus failed (run apt-get update first?)" >&2
      exit 1
    }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
    mkdir -p "$cache/usr/bin"
    cp "$tmp/root/usr/bin/promtool" "$promtool"
  fi
fi

"$promtool" check rules "$here/alerts.yml"
"$promtool" test rules "$here/alerts_test.yml"
python3 -m json.tool "$here/dashboard.json" >/dev/null
echo "check: dashboard.json is valid JSON"
