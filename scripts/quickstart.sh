#!/usr/bin/env bash
# quickstart.sh: install build dependencies, build elmo, and train on the bundled Bibtex data
# (GPU when one is present, else the CPU reference backend); prints P@k at the end.
# Extra arguments go to elmo-train, e.g. --device cpu or --set training.epochs=5.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f build/build.ninja ]; then
  meson setup build ${MESON_ARGS:-} >/dev/null
fi
ninja -C build >/dev/null
exec ./build/elmo-train configs/bibtex.json "$@"
