#!/usr/bin/env bash
# Render a report page in headless Chromium and save a PNG screenshot (no network, throwaway profile).
#
#   scripts/report_screenshot.sh <root>/reports/ds=2026-11-03/index.html shot.png [1280,4000]
#
# CHROMIUM overrides the browser binary (default /usr/bin/chromium).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 INDEX_HTML OUT_PNG [WIDTH,HEIGHT]" >&2
  exit 2
fi
page=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1280,4000}
browser=${CHROMIUM:-/usr/bin/chromium}
[[ -f "$page" ]] || { echo "no such page: $page" >&2; exit 2; }
[[ -x "$browser" ]] || { echo "no Chromium at $browser (apt-get install chromium)" >&2; exit 3; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# CI-safe: no sandbox (root in a container), no GPU, small /dev/shm tolerated, no network
# (updates, sync, first-run), a fresh profile each time.
"$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --disable-extensions --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$out" --window-size="$size" "file://$page" >/dev/null 2>&1
[[ -s "$out" ]] || { echo "Chromium wrote no screenshot to $out" >&2; exit 1; }
echo "$out"
