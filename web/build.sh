#!/usr/bin/env bash
# Builds the web editor (web/src) into crates/cod-server/assets, or into the directory given
# as the first argument (check.sh builds into a temporary one). The output is deterministic:
# the same sources and package-lock.json give the same bytes.
#
#   web/build.sh            rebuild the committed bundle
#   web/build.sh DIR        build into DIR
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/../crates/cod-server/assets}"
cd "$here"

# Install exactly what package-lock.json says when node_modules is missing or was installed
# from another lock file (a stamp holds the hash of the lock file it was installed from).
stamp=node_modules/.cod-package-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "build.sh: installing node_modules (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
  echo "$want" > "$stamp"
fi

mkdir -p "$out"
esbuild=node_modules/.bin/esbuild
"$esbuild" src/main.js --bundle --minify --format=iife --target=es2020 \
  --legal-comments=none --log-level=warning --outfile="$out/app.js"
"$esbuild" src/app.css --minify --legal-comments=none --log-level=warning --outfile="$out/app.css"

# index.html names the bundle with its content hash, so a browser never runs a stale app.js
# against a new page (the server ignores the query string).
hash() { sha256sum "$1" | cut -c1-12; }
sed -e "s/@JS_HASH@/$(hash "$out/app.js")/" -e "s/@CSS_HASH@/$(hash "$out/app.css")/" \
  src/index.html > "$out/index.html"

raw=$(wc -c < "$out/app.js")
gz=$(gzip -9n < "$out/app.js" | wc -c)
echo "build.sh: $out/app.js $raw bytes ($gz gzipped), app.css $(wc -c < "$out/app.css") bytes, index.html" >&2
