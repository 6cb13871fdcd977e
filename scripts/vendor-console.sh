#!/usr/bin/env bash
# Re-vendors the console's one third-party asset, dagre (graph layout, MIT), from the npm
# registry at the pinned version, and checks it is the file that was reviewed:
#   scripts/vendor-console.sh
# Writes rabbitmesh/console/static/dagre.min.js and DAGRE-LICENSE.txt. No bundler: dagre's
# own dist/dagre.min.js is a self-contained script (graphlib included) used as shipped.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.1.3
# sha256 of dist/dagre.min.js in @dagrejs/dagre@$VERSION (tests/unit/test_console_assets.py
# checks the committed file against it).
SHA256=54a503e346f93ca0bb10abe7999587e037262935687aca45eb4e4b0f64bbb578
DEST=rabbitmesh/console/static

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@dagrejs/dagre@$VERSION" >/dev/null && tar xzf ./*.tgz)
echo "$SHA256  $work/package/dist/dagre.min.js" | sha256sum -c --quiet
cp "$work/package/dist/dagre.min.js" "$DEST/dagre.min.js"
cp "$work/package/LICENSE" "$DEST/DAGRE-LICENSE.txt"
echo "vendored @dagrejs/dagre@$VERSION into $DEST"
