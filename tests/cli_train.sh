#!/usr/bin/env bash
# cli_train.sh: elmo-train end to end on the CPU backend with the bundled Bibtex data:
# training + checkpoint + elmo-eval agree, resume is bit-exact, validation split and early
# stopping, and bad configs/data exit 2 naming the JSON path or file:line.
# $1 = elmo-train, $2 = elmo-eval.
set -u
TRAIN=$1
EVAL=$2
SRC=${ELMO_SOURCE_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
T=$(mktemp -d /tmp/elmo-cli-train-XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$SRC"
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
# small, fast model on the real data
SMALL=(--device cpu --set model.encoder.dim=64 --set training.batch_size=256 --set eval.every_epochs=1)

# --- 1. train, checkpoint, evaluate the checkpoint: identical metrics -------------------------
"$TRAIN" configs/bibtex.json "${SMALL[@]}" --set training.epochs=2 --out "$T/a" >"$T/a.out" 2>"$T/a.err"
rc=$?
if [ $rc -eq 0 ]; then ok "train 2 epochs"; else bad "train exited $rc: $(tail -3 "$T/a.err")"; fi
[ "$(wc -l <"$T/a/metrics.jsonl")" -eq 2 ] && ok "metrics.jsonl has 2 evaluations" || bad "metrics.jsonl lines"
grep -q '^P@k: ' "$T/a.out" && ok "summary table printed" || bad "no summary table"
for f in model.safetensors optimizer.safetensors config.json state.json; do
  [ -f "$T/a/last/$f" ] || bad "missing last/$f"
done
[ -f "$T/a/predictions.txt" ] && head -1 "$T/a/predictions.txt" | grep -q '^2515 159$' && ok "predictions.txt header" || bad "predictions.txt"
"$EVAL" "$T/a/last" --device cpu --json >"$T/eval.json" 2>"$T/eval.err" || bad "elmo-eval checkpoint: $(cat "$T/eval.err")"
awk -v J="$(cat "$T/eval.json")" '
  function val(s, key,   i, r) { i = index(s, "\"" key "\":"); if (!i) return "x"; r = substr(s, i + length(key) + 3); sub(/[,}].*/, "", r); return r }
  { last = $0 }
  END {
    n = split("P@1 P@3 P@5 nDCG@3 PSP@1 PSP@5 PSnDCG@5", keys, " ")
    for (i = 1; i <= n; i++) {
      a = val(last, keys[i]); b = val(J, keys[i])
      if (a == "x" || b == "x" || (a - b) > 1e-7 || (b - a) > 1e-7) { print "mismatch " keys[i] " " a " " b; exit 1 }
    }
  }' "$T/a/metrics.jsonl" && ok "elmo-eval on the checkpoint reproduces the last evaluation" || bad "checkpoint metrics differ"

# the last checkpoint shares the tensors of "best" (hard links) exactly when the last evaluation was the best
be=$(sed -n 's/.*"best_epoch":[^0-9]*\([0-9]*\).*/\1/p' "$T/a/last/state.json")
same=0; [ "$(stat -c %i "$T/a/best/model.safetensors")" = "$(stat -c %i "$T/a/last/model.safetensors")" ] && same=1
[ "$same" = "$([ "$be" = 2 ] && echo 1 || echo 0)" ] && ok "last/ links best/'s tensors iff epoch 2 was the best (best epoch $be)" \
  || bad "last/ and best/ share tensors: $same, best epoch $be"
"$TRAIN" configs/bibtex.json "${SMALL[@]}" --set training.epochs=1 --out "$T/one" >/dev/null 2>"$T/one.err" || bad "1 epoch: $(tail -2 "$T/one.err")"
if [ "$(stat -c %i "$T/one/best/model.safetensors")" = "$(stat -c %i "$T/one/last/model.safetensors")" ] &&
   [ "$(stat -c %i "$T/one/best/optimizer.safetensors")" = "$(stat -c %i "$T/one/last/optimizer.safetensors")" ] &&
   [ "$(stat -c %h "$T/one/last/model.safetensors")" = 2 ]; then
  ok "one epoch: last/ holds best/'s tensors as hard links, no second copy"
else
  bad "one epoch: last/ wrote its own tensors"
fi
"$EVAL" "$T/one/last" --device cpu --json >"$T/one.json" 2>"$T/one.eerr" && grep -q '"P@1"' "$T/one.json" \
  && ok "elmo-eval reads the linked checkpoint" || bad "elmo-eval on the linked checkpoint: $(cat "$T/one.eerr")"

# --- 2. resume reproduces the uninterrupted run bit for bit ---------------------------------
R=(--set training.log_every=1 --set training.epochs=3 --set output.checkpoint_every=1)
"$TRAIN" configs/bibtex.json "${SMALL[@]}" "${R[@]}" --out "$T/full" >/dev/null 2>"$T/full.err" || bad "full run: $(tail -2 "$T/full.err")"
steps=$(wc -l <"$T/full/loss.tsv")
half=$((steps / 3 + 3)) # mid-epoch 2
"$TRAIN" configs/bibtex.json "${SMALL[@]}" "${R[@]}" --set training.max_steps=$half --out "$T/part" >/dev/null 2>"$T/part.err" \
  || bad "partial run: $(tail -2 "$T/part.err")"
"$TRAIN" configs/bibtex.json "${SMALL[@]}" "${R[@]}" --out "$T/part" --resume "$T/part/last" >/dev/null 2>"$T/res.err" \
  || bad "resume: $(tail -2 "$T/res.err")"
if cmp -s "$T/full/loss.tsv" "$T/part/loss.tsv" && [ "$steps" -gt 10 ]; then
  ok "resume at step $half reproduces all $steps losses bit for bit"
else
  bad "resumed losses differ: $(diff "$T/full/loss.tsv" "$T/part/loss.tsv" | head -4)"
fi
cmp -s "$T/full/last/model.safetensors" "$T/part/last/model.safetensors" && ok "final weights identical" || bad "final weights differ"

# --- 3. validation split and early stopping -------------------------------------------------
"$TRAIN" configs/bibtex.json "${SMALL[@]}" --set training.epochs=30 --set data.val_fraction=0.1 \
  --set training.patience=1 --set training.classifier.lr=2 --out "$T/v" >/dev/null 2>"$T/v.err"
grep -q '"val":{"P@1"' "$T/v/metrics.jsonl" && ok "validation metrics logged" || bad "no val metrics"
grep -q "train 4392 rows, val 488" "$T/v.err" && ok "validation split carved" || bad "split sizes: $(grep data: "$T/v.err")"
[ "$(wc -l <"$T/v/metrics.jsonl")" -lt 30 ] && grep -q "early stopping" "$T/v.err" && ok "early stopping" || bad "no early stop"
[ "$(head -1 "$T/v/predictions.txt" 2>/dev/null)" = "2515 159" ] && ok "predictions written after an early stop" || bad "no predictions after early stop"

# --- 4. Python sees an F8_E4M3 classifier (when safetensors is importable) ------------------
if python3 -c "import safetensors, numpy" 2>/dev/null; then
  python3 - "$T/a/last/model.safetensors" <<'PY' && ok "python safetensors reads classifier.weight F8_E4M3 [160, 64]" || bad "python safetensors check"
import sys
from safetensors import safe_open
f = safe_open(sys.argv[1], "numpy")
s = f.get_slice("classifier.weight")
assert s.get_dtype() == "F8_E4M3", s.get_dtype()
assert list(s.get_shape()) == [160, 64], s.get_shape()
assert f.metadata()["num_labels"] == "159"
PY
else
  echo "skip python safetensors check (python3 safetensors/numpy not importable)"
fi

# --- 4b. transformer on pseudo-text: tokenized ids are cached and reused bit for bit ---------
TX=(--device cpu --set training.max_steps=2 --set training.log_every=1 --set training.batch_size=16 --set eval.topk=5
    --set model.encoder.dim=32 --set model.encoder.heads=2 --set model.encoder.ffn_dim=64 --set model.encoder.layers=1)
"$TRAIN" configs/bibtex-text.json "${TX[@]}" --out "$T/tx" >/dev/null 2>"$T/tx1.err" || bad "text run: $(tail -2 "$T/tx1.err")"
cp "$T/tx/loss.tsv" "$T/tx-loss1.tsv"
"$TRAIN" configs/bibtex-text.json "${TX[@]}" --out "$T/tx" >/dev/null 2>"$T/tx2.err" || bad "text rerun: $(tail -2 "$T/tx2.err")"
if grep -q "train 4880 rows.*tokenized" "$T/tx1.err" && grep -q "token ids from the cache" "$T/tx2.err" &&
   cmp -s "$T/tx-loss1.tsv" "$T/tx/loss.tsv"; then
  ok "token cache: second run reads the cached ids and reproduces the losses"
else
  bad "token cache: $(grep '^data' "$T/tx1.err" "$T/tx2.err")"
fi

# --- 5. bad input exits 2 naming the JSON path or file:line ---------------------------------
expect2() { # name, needle, command...
  local name=$1 needle=$2
  shift 2
  "$@" >"$T/x.out" 2>"$T/x.err"
  local rc=$?
  if [ $rc -eq 2 ] && grep -qF -- "$needle" "$T/x.err"; then ok "$name"; else bad "$name: rc=$rc $(head -2 "$T/x.err")"; fi
}
printf '{"data":{"dir":"datasets/bibtex"},"training":{"lr":0.1}}' >"$T/unknown.json"
expect2 "unknown key" "training.lr: unknown key" "$TRAIN" "$T/unknown.json" --device cpu
printf '{"data":{"dir":"datasets/bibtex"},"training":{"epochs":"ten"}}' >"$T/type.json"
expect2 "wrong type" "training.epochs" "$TRAIN" "$T/type.json" --device cpu
printf '{"data":{"dir":"datasets/bibtex"},\n "model": }' >"$T/json.json"
expect2 "invalid JSON" "json.json:2:" "$TRAIN" "$T/json.json" --device cpu
expect2 "--set unknown key" "--set training.epoch" "$TRAIN" configs/bibtex.json --set training.epoch=3 --device cpu
expect2 "unknown option" "unknown" "$TRAIN" configs/bibtex.json --bogus
expect2 "missing data" "$T/nodata/train.txt" "$TRAIN" configs/bibtex.json --set data.dir="$T/nodata" --device cpu --out "$T/o"
mkdir -p "$T/badbow"
printf '3 4 2\n0 1:1\n1,9 2:1\n 0:1\n' >"$T/badbow/train.txt"
cp "$T/badbow/train.txt" "$T/badbow/test.txt"
expect2 "bad data line" "train.txt:3:" "$TRAIN" configs/bibtex.json --set data.dir="$T/badbow" --device cpu --out "$T/o"
expect2 "eval: not a checkpoint" "not a checkpoint" "$EVAL" "$T" --device cpu

echo "$fails failure(s)"
[ $fails -eq 0 ]
