#!/usr/bin/env bash
# setup.sh: install what elmo needs to build and test (Debian/Ubuntu). Run as root to install,
# otherwise prints the exact command. nvcc and cuBLASLt come with the machine's CUDA toolkit.
set -euo pipefail
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in meson ninja-build pkg-config gcc libcjson-dev zlib1g-dev libcmocka-dev; do
  have_pkg "$p" || need+=("$p")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "setup: all build dependencies present"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "setup: missing packages; run:"
  echo "  sudo apt-get install -y ${need[*]}"
  exit 1
fi
