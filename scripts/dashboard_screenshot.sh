#!/usr/bin/env bash
# Screenshot of the lag dashboard of a running API (default http://127.0.0.1:8000):
#   .venv/bin/streamflow api &   scripts/dashboard_screenshot.sh [URL] [out/dashboard.png]
set -euo pipefail
URL="${1:-http://127.0.0.1:8000}/dashboard"
OUT="${2:-out/dashboard.png}"
mkdir -p "$(dirname "$OUT")"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1400,900 --virtual-time-budget=8000 \
  --screenshot="$OUT" "$URL" 2>/dev/null
echo "wrote $OUT"
