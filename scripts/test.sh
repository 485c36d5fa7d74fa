#!/usr/bin/env bash
# test.sh: set up, build and run the test suites. GPU tests skip (exit 77) without a GPU.
# Usage: scripts/test.sh [build-dir]   (env MESON_ARGS adds meson setup options)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dir=${1:-build}
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" ${MESON_ARGS:-}
fi
ninja -C "$dir"
meson test -C "$dir" --print-errorlogs --num-processes 2
