#!/usr/bin/env bash
# Runs the browser test against the mock server (tests/mock-server.mjs) on a free port,
# using the committed bundle in crates/cod-server/assets.
#
#   web/tests/run-mock.sh
#
# Needs Debian's chromium (apt-get install -y chromium) and web/node_modules (npm ci, made
# here when missing).
set -euo pipefail

web="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$web"
chromium="${CHROMIUM:-/usr/bin/chromium}"
[[ -x $chromium ]] || { echo "run-mock.sh: $chromium not found: apt-get install -y chromium" >&2; exit 1; }
[[ -d node_modules/playwright-core && -d node_modules/ws ]] || npm ci --no-audit --no-fund --loglevel=error >&2

log="$(mktemp)"
node tests/mock-server.mjs --port 0 >"$log" 2>&1 &
mock=$!
cleanup() {
  kill "$mock" 2>/dev/null || true
  wait "$mock" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

# Wait (at most 10 s) until the mock says where it listens and answers there.
url=""
for _ in $(seq 100); do
  kill -0 "$mock" 2>/dev/null || { echo "run-mock.sh: the mock server exited:" >&2; cat "$log" >&2; exit 1; }
  url="$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$log" | head -n1 || true)"
  if [[ -n $url ]] && curl -fsS -o /dev/null --max-time 1 "$url"; then break; fi
  url=""
  sleep 0.1
done
[[ -n $url ]] || { echo "run-mock.sh: the mock server did not answer within 10 s:" >&2; cat "$log" >&2; exit 1; }
echo "run-mock.sh: mock server at $url"

status=0
COD_URL="$url" COD_MOCK=1 node tests/browser.mjs || status=$?

# The mock counts protocol mistakes (edits at a wrong version, bad messages): there must be none.
state="$(curl -fsS --max-time 5 "${url}__mock/state")"
if ! node -e 'const s = JSON.parse(process.argv[1]); console.log(`run-mock.sh: mock saw ${JSON.stringify(s.stats)}`);
  if (s.violations.length) { console.error(`run-mock.sh: protocol violations: ${JSON.stringify(s.violations)}`); process.exit(1); }' "$state"; then
  status=1
fi
if (( status )); then
  echo "run-mock.sh: mock server log:" >&2
  cat "$log" >&2
fi
exit "$status"
