#!/usr/bin/env bash
# test.sh: set up, build and run the test suites. GPU tests skip (exit 77) without a GPU.
# Usage: scripts/test.sh [build-dir]   (env MESON_ARGS adds meson setup options)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Optional: the checkpoint interop tests read our safetensors files from Python when the
# `safetensors` package is importable (skipped otherwise). Never fatal.
if command -v python3 >/dev/null && ! python3 -c "import safetensors, numpy" 2>/dev/null; then
  python3 -m pip install --quiet safetensors numpy >/dev/null 2>&1 || echo "test: python safetensors unavailable; interop checks will skip"
fi
dir=${1:-build}
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" ${MESON_ARGS:-}
fi
ninja -C "$dir"
meson test -C "$dir" --print-errorlogs --num-processes 2
