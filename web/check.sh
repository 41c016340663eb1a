#!/usr/bin/env bash
# Fails when the committed bundle in crates/cod-server/assets is not what web/build.sh makes
# from web/src and web/package-lock.json.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
assets="$here/../crates/cod-server/assets"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$here/build.sh" "$tmp" 2>"$tmp.log" || { cat "$tmp.log" >&2; rm -f "$tmp.log"; echo "check.sh: web/build.sh failed" >&2; exit 1; }
rm -f "$tmp.log"

stale=0
for f in index.html app.js app.css; do
  if [[ ! -f $assets/$f ]]; then
    echo "check.sh: crates/cod-server/assets/$f is missing" >&2
    stale=1
  elif ! cmp -s "$tmp/$f" "$assets/$f"; then
    echo "check.sh: crates/cod-server/assets/$f differs from a fresh build of web/" >&2
    stale=1
  fi
done
if (( stale )); then
  echo "check.sh: the committed web bundle is stale: run web/build.sh and commit crates/cod-server/assets" >&2
  exit 1
fi
echo "check.sh: the committed web bundle matches web/src"
