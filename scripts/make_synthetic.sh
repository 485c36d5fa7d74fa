#!/usr/bin/env bash
# make_synthetic.sh: a synthetic XMC dataset with a real dataset's shape, in the text format
# (trn_X.txt + trn_X_Y.txt, tst_X.txt + tst_X_Y.txt), for memory and speed runs.
# Texts are random WordPiece-vocabulary words; labels follow a Zipf-like long tail.
# Usage: scripts/make_synthetic.sh OUT_DIR N_TRAIN N_TEST NUM_LABELS [LABELS_PER_ROW=5] [WORDS=40] [SEED=1]
set -euo pipefail
out=$1 ntr=$2 nte=$3 L=$4 lpr=${5:-5} words=${6:-40} seed=${7:-1}
vocab=$(dirname "$0")/../datasets/vocab/vocab.txt
mkdir -p "$out"
gen() { # n_rows prefix seed
  awk -v n="$1" -v L="$L" -v lpr="$lpr" -v words="$words" -v seed="$3" -v xf="$out/$2_X.txt" -v yf="$out/$2_X_Y.txt" '
    NR == FNR { if ($0 ~ /^[a-z]+$/) w[nw++] = $0; next }
    END {
      srand(seed)
      print n " " L > yf
      for (i = 0; i < n; i++) {
        t = w[int(rand() * nw)]
        for (j = 1; j < words; j++) t = t " " w[int(rand() * nw)]
        print t > xf
        delete seen; line = ""; c = 0
        while (c < lpr) {
          l = int(L * rand() ^ 3)          # long tail: low ids are frequent
          if (l >= L) l = L - 1
          if (l in seen) continue
          seen[l] = 1; c++
          line = line (line == "" ? "" : " ") l ":1"
        }
        print line > yf
      }
    }' "$vocab" /dev/null
}
gen "$ntr" trn "$seed"
gen "$nte" tst "$((seed + 1))"
echo "synthetic dataset in $out: $ntr train / $nte test rows, $L labels, $lpr labels per row"
