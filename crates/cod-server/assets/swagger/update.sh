#!/usr/bin/env bash
# Vendors Swagger UI from npm's swagger-ui-dist into this directory, gzip-compressed: the
# server serves these files at /api/docs (see src/openapi.rs), so the page loads nothing
# from the network and building cod downloads nothing. Run by hand to update the version.
set -euo pipefail
VERSION="${1:-5.35.0}"
cd "$(dirname "$0")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "swagger-ui-dist@$VERSION" --silent >/dev/null && tar xzf swagger-ui-dist-*.tgz)
gzip -9 -n -c "$tmp/package/swagger-ui-bundle.js" > swagger-ui-bundle.js.gz
gzip -9 -n -c "$tmp/package/swagger-ui.css" > swagger-ui.css.gz
cp "$tmp/package/LICENSE" LICENSE
cp "$tmp/package/NOTICE" NOTICE
echo "$VERSION" > VERSION
