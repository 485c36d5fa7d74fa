#!/usr/bin/env bash
# cli_config.sh: README.md documents every config key exactly as docs/CONFIG.md (generated from
# the schema, checked by test_config) does.
set -u
SRC=${ELMO_SOURCE_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
missing=0
while IFS= read -r row; do
  grep -qxF -- "$row" "$SRC/README.md" || { echo "README.md lacks: $row"; missing=$((missing + 1)); }
done < <(grep '^| `' "$SRC/docs/CONFIG.md")
n=$(grep -c '^| `' "$SRC/docs/CONFIG.md")
[ "$n" -gt 50 ] || { echo "docs/CONFIG.md has only $n key rows"; exit 1; }
echo "$n keys checked, $missing missing from README.md"
[ $missing -eq 0 ]
