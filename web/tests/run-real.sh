#!/usr/bin/env bash
# Runs the browser test (tests/browser.mjs) against a real `cod serve`: started here on a free
# loopback port with a temporary configuration and compile cache, waited for until /healthz
# answers, and stopped at the end.
#
#   web/tests/run-real.sh [PATH/TO/cod]      (default: target/debug/cod)
#
# Needs root (the sandbox), Debian's chromium (apt-get install -y chromium) and
# web/node_modules (npm ci, made here when missing).
set -euo pipefail

web="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$(cd "$web/.." && pwd)"
cod="${1:-$root/target/debug/cod}"
[[ -x $cod ]] || { echo "run-real.sh: $cod not found: build it first (cargo build)" >&2; exit 1; }
# Made absolute: the script changes directory below (scripts/test passes a relative path).
cod="$(cd "$(dirname "$cod")" && pwd)/$(basename "$cod")"
chromium="${CHROMIUM:-/usr/bin/chromium}"
[[ -x $chromium ]] || { echo "run-real.sh: $chromium not found: apt-get install -y chromium" >&2; exit 1; }
cd "$web"
[[ -d node_modules/playwright-core ]] || npm ci --no-audit --no-fund --loglevel=error >&2

tmp="$(mktemp -d)"
server=""
cleanup() {
  if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    # cod drains for at most its grace period; do not wait longer than 30 s.
    for _ in $(seq 300); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

cat > "$tmp/cod.toml" <<EOF
[server]
listen = "127.0.0.1:0"
workers = 2

[cache]
dir = "$tmp/cache"
EOF

log="$tmp/serve.log"
COD_LOG=info "$cod" serve --config "$tmp/cod.toml" >"$log" 2>&1 &
server=$!

# Wait (at most 60 s) until cod says where it listens and /healthz answers there.
url=""
for _ in $(seq 600); do
  kill -0 "$server" 2>/dev/null || { echo "run-real.sh: cod serve exited:" >&2; cat "$log" >&2; exit 1; }
  url="$(grep -o 'serving on http://127\.0\.0\.1:[0-9]*/' "$log" | head -n1 | sed 's/^serving on //' || true)"
  if [[ -n $url ]] && curl -fsS -o /dev/null --max-time 1 "${url}healthz"; then break; fi
  url=""
  sleep 0.1
done
[[ -n $url ]] || { echo "run-real.sh: cod serve did not answer /healthz within 60 s:" >&2; cat "$log" >&2; exit 1; }
echo "run-real.sh: cod serve at $url"

# The C++ check expects a run to find its compile-ahead cached; a compile that starts before
# the precompiled header is built has other flags (so another cache key) than a run after it.
# Wait (at most 180 s) until cod reports the C++ prebuild done, either way.
for _ in $(seq 1800); do
  grep -Eq 'prebuild (ready|failed).*language=c(pp|\+\+)' "$log" && break
  kill -0 "$server" 2>/dev/null || { echo "run-real.sh: cod serve exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
grep -Eq 'prebuild (ready|failed).*language=c(pp|\+\+)' "$log" \
  || { echo "run-real.sh: the C++ prebuild did not finish within 180 s" >&2; tail -n 50 "$log" >&2; exit 1; }

status=0
COD_URL="$url" node tests/browser.mjs || status=$?
if (( status )); then
  echo "run-real.sh: cod serve log:" >&2
  tail -n 200 "$log" >&2
fi
exit "$status"
