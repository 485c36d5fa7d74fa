#!/usr/bin/env bash
# cli_eval.sh: elmo-eval prediction-file mode end to end on the pyxclib test vector
# (docs xmc-formats-metrics.md §1.12): JSON values within 1e-6, the table lines, filter,
# remove-invalid, propensity families and flags, and the exit code + message of bad inputs.
# Args: $1 = elmo-train (unused), $2 = elmo-eval. Needs only bash, awk, grep (gzip optional).
set -euo pipefail

EVAL=$2
T=$(mktemp -d /tmp/elmo-cli-eval-XXXXXX)
trap 'rm -rf "$T"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

printf '5 6\n0:1\n0:1 1:1\n2:1\n0:1 3:1\n\n' > "$T/trn.txt"
printf '4 6\n0:1 2:1\n1:1\n3:1 4:1 5:1\n\n' > "$T/tst.txt"
printf '4 6\n0:0.9 1:0.4 2:0.5 5:0.1\n1:0.7 3:0.8\n0:-0.2 1:-0.5 3:-0.4 4:-0.3 5:-0.1\n1:1.0 2:0.9\n' > "$T/pred.txt"
printf '1 3\n' > "$T/filter.txt"

# run EXPECTED_RC OUTFILE CMD...: runs CMD with stdout+stderr to OUTFILE, checks the exit code.
run() {
  local want=$1 out=$2 rc=0
  shift 2
  "$@" > "$out" 2>&1 || rc=$?
  [ "$rc" -eq "$want" ] || { cat "$out" >&2; fail "exit $rc, expected $want: $*"; }
}

# json_check FILE "NAME=VALUE ...": every NAME present with a plain number within 1e-6 of VALUE.
json_check() {
  awk -v want="$2" '
    BEGIN { n = split(want, pairs, " ") }
    /^\{/ {
      line = $0
      gsub(/[{}"]/, "", line)
      m = split(line, kv, ",")
      for (i = 1; i <= m; i++) {
        split(kv[i], p, ":")
        if (p[2] !~ /^-?[0-9]+(\.[0-9]+)?$/) { print "not a number: " kv[i]; bad = 1 }
        got[p[1]] = p[2]; keys++
      }
    }
    END {
      for (i = 1; i <= n; i++) {
        split(pairs[i], e, "=")
        if (!(e[1] in got)) { print "missing " e[1]; bad = 1; continue }
        d = got[e[1]] - e[2]; if (d < 0) d = -d
        if (d > 1e-6) { print e[1] " = " got[e[1]] ", expected " e[2]; bad = 1 }
      }
      if (keys != 30) { print "expected 30 keys, got " keys; bad = 1 }
      exit bad
    }' "$1" || fail "json values in $1"
}

# expand NAME "v1 v2 v3 v4 v5" -> "NAME@1=v1 ... NAME@5=v5"
expand() {
  local name=$1 i=1 out=""
  for v in $2; do out="$out $name@$i=$v"; i=$((i + 1)); done
  echo "$out"
}

has_line() { grep -qxF -- "$2" "$1" || { cat "$1" >&2; fail "missing line '$2'"; }; }
has_text() { grep -qF -- "$2" "$1" || { cat "$1" >&2; fail "missing text '$2'"; }; }

BASE=(--pred "$T/pred.txt" --truth "$T/tst.txt" --train "$T/trn.txt")

# --- §1.12 with A=0.55, B=1.5 (the "other" family; the temp path names no family) ---
P="0.5 0.5 0.416667 0.375 0.3"
NDCG="0.5 0.561019 0.583712 0.634239 0.634239"
R="0.208333 0.583333 0.666667 0.75 0.75"
run 0 "$T/out" "$EVAL" "${BASE[@]}" --json
json_check "$T/out" "$(expand P "$P") $(expand nDCG "$NDCG") $(expand R "$R")"
json_check "$T/out" "$(expand PSP "0.646283 0.781595 0.837162 1 1") $(expand PSnDCG "0.646283 0.731664 0.771948 0.838135 0.838135")"
json_check "$T/out" "$(expand PSR "0.438558 0.861186 0.889974 1 1")"

# --- A=0.6, B=2.6 explicitly ---
run 0 "$T/out" "$EVAL" "${BASE[@]}" --json -A 0.6 -B 2.6
json_check "$T/out" "$(expand P "$P") $(expand PSP "0.646884 0.786872 0.835394 1 1")"
json_check "$T/out" "$(expand PSnDCG "0.646884 0.735044 0.772114 0.838852 0.838852")"

# --- family guessed from a path containing "Amazon", and --family overriding the guess ---
mkdir -p "$T/LF-AmazonTitles-test"
cp "$T/tst.txt" "$T/LF-AmazonTitles-test/tst_X_Y.txt"
AMZ=(--pred "$T/pred.txt" --truth "$T/LF-AmazonTitles-test/tst_X_Y.txt" --train "$T/trn.txt")
run 0 "$T/out" "$EVAL" "${AMZ[@]}" --json
json_check "$T/out" "$(expand PSP "0.646884 0.786872 0.835394 1 1")"
run 0 "$T/out" "$EVAL" "${AMZ[@]}" --json --family other
json_check "$T/out" "$(expand PSP "0.646283 0.781595 0.837162 1 1")"
run 0 "$T/out" "$EVAL" "${BASE[@]}" --json --family=amazon
json_check "$T/out" "$(expand PSP "0.646884 0.786872 0.835394 1 1")"

# --- --psp-train-aug (N + L rows, frequencies + 1), values from an independent reimplementation ---
run 0 "$T/out" "$EVAL" "${BASE[@]}" --json --family amazon --psp-train-aug
json_check "$T/out" "$(expand PSP "0.641520 0.785536 0.835168 1 1") $(expand PSnDCG "0.641520 0.732866 0.770397 0.837207 0.837207")"

# --- the table, pyxclib format ---
run 0 "$T/out" "$EVAL" "${BASE[@]}"
has_line "$T/out" "P@k: 50.00,50.00,41.67,37.50,30.00"
has_line "$T/out" "nDCG@k: 50.00,56.10,58.37,63.42,63.42"
has_line "$T/out" "PSP@k: 64.63,78.16,83.72,100.00,100.00"
has_line "$T/out" "PSnDCG@k: 64.63,73.17,77.19,83.81,83.81"
has_line "$T/out" "R@k: 20.83,58.33,66.67,75.00,75.00"
has_line "$T/out" "PSR@k: 43.86,86.12,89.00,100.00,100.00"
run 0 "$T/out" "$EVAL" "${BASE[@]}" -k 3
has_line "$T/out" "P@k: 50.00,50.00,41.67"

# --- filter (row 1, label 3) and remove-invalid ---
run 0 "$T/out" "$EVAL" "${BASE[@]}" --filter "$T/filter.txt"
has_line "$T/out" "P@k: 75.00,50.00,41.67,37.50,30.00"
run 0 "$T/out" "$EVAL" "${BASE[@]}" --filter "$T/filter.txt" --json
json_check "$T/out" "$(expand P "0.75 0.5 0.416667 0.375 0.3")"
run 0 "$T/out" "$EVAL" "${BASE[@]}" --remove-invalid
has_line "$T/out" "P@k: 66.67,66.67,55.56,50.00,40.00"
run 0 "$T/out" "$EVAL" "${BASE[@]}" --remove-invalid --json
json_check "$T/out" "$(expand P "0.666667 0.666667 0.555556 0.5 0.4")"

# --- gzip input ---
if command -v gzip > /dev/null; then
  gzip -c "$T/pred.txt" > "$T/pred.txt.gz"
  run 0 "$T/out" "$EVAL" --pred "$T/pred.txt.gz" --truth "$T/tst.txt" --train "$T/trn.txt" --json
  json_check "$T/out" "$(expand P "$P")"
fi

# --- bad inputs: exit 2, message names the file and line ---
printf '4 6\n0:0.9\n1:0.7 6:0.2\n\n\n' > "$T/pred_bad.txt"
run 2 "$T/out" "$EVAL" --pred "$T/pred_bad.txt" --truth "$T/tst.txt" --train "$T/trn.txt"
has_text "$T/out" "pred_bad.txt:3:"
printf '4 7\n0:0.9\n\n\n\n' > "$T/pred_wide.txt"
run 2 "$T/out" "$EVAL" --pred "$T/pred_wide.txt" --truth "$T/tst.txt" --train "$T/trn.txt"
has_text "$T/out" "pred_wide.txt"
has_text "$T/out" "tst.txt"
printf '3 6\n0:0.9\n\n\n' > "$T/pred_short.txt"
run 2 "$T/out" "$EVAL" --pred "$T/pred_short.txt" --truth "$T/tst.txt" --train "$T/trn.txt"
has_text "$T/out" "pred_short.txt"
printf '2 5\n0:1\n\n' > "$T/trn5.txt"
run 2 "$T/out" "$EVAL" --pred "$T/pred.txt" --truth "$T/tst.txt" --train "$T/trn5.txt"
has_text "$T/out" "trn5.txt"
printf '1 3\n9 0\n' > "$T/filter_bad.txt"
run 2 "$T/out" "$EVAL" "${BASE[@]}" --filter "$T/filter_bad.txt"
has_text "$T/out" "filter_bad.txt:2:"
run 2 "$T/out" "$EVAL" --pred "$T/missing.txt" --truth "$T/tst.txt" --train "$T/trn.txt"
has_text "$T/out" "missing.txt"

# --- usage errors: exit 2 with the usage line; --help exits 0 ---
run 2 "$T/out" "$EVAL" "${BASE[@]}" --bogus
has_text "$T/out" "usage: elmo-eval"
has_text "$T/out" "--bogus"
run 2 "$T/out" "$EVAL" --pred "$T/pred.txt" --train "$T/trn.txt"
has_text "$T/out" "--truth"
run 2 "$T/out" "$EVAL" "${BASE[@]}" -k five
has_text "$T/out" "usage: elmo-eval"
run 2 "$T/out" "$EVAL" "${BASE[@]}" -k 101
run 2 "$T/out" "$EVAL" "${BASE[@]}" -A
run 2 "$T/out" "$EVAL" "${BASE[@]}" -B 1.5x
run 2 "$T/out" "$EVAL" "${BASE[@]}" --family books
run 0 "$T/out" "$EVAL" --help
has_text "$T/out" "usage: elmo-eval"

# --- checkpoint mode: a directory that is not a checkpoint (the real mode is in cli_train.sh) ---
run 2 "$T/out" "$EVAL" "$T" --device cpu
has_text "$T/out" "not a checkpoint directory"

echo "cli_eval: all checks passed"
