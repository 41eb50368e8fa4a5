#!/usr/bin/env bash
# One command, one machine: taylormap's GPU backend, CPU engine and f64 reference, and Zennit (and Captum, for the
# composites Captum can express: lrp-zero, epsilon-plus; and iNNvestigate on the CPU, for deep-taylor-bounded and
# lrp-zero, when INNVESTIGATE_PYTHON names a Python with TensorFlow < 2.15 and iNNvestigate) on the same ONNX
# network, composite and batch sizes; prints every JSON line, then the ratios.
#   benchmarks/compare.sh [MODEL] [COMPOSITE] [BATCHES] [DEVICE]
#   defaults: assets/models/mnist-cnn.onnx deep-taylor-bounded 64,1024 cuda-if-available
# TAYLORMAP (default target/release/taylormap), PYTHON (default python3) and BACKENDS can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-assets/models/mnist-cnn.onnx}
COMPOSITE=${2:-deep-taylor-bounded}
BATCHES=${3:-64,1024}
PYTHON=${PYTHON:-python3}
TAYLORMAP=${TAYLORMAP:-target/release/taylormap}
DEVICE=${4:-$($PYTHON -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
OUT=$(mktemp -d)
# the first 1,000 bundled test images as float32 NPY, for both tools
$PYTHON - "$OUT/x.npy" <<'PY'
import gzip, sys
import numpy as np
raw = gzip.open("assets/mnist/t10k-images.idx3-ubyte.gz").read()[16:16 + 1000 * 784]
np.save(sys.argv[1], (np.frombuffer(raw, np.uint8).reshape(1000, 1, 28, 28) / 255.0).astype(np.float32))
PY
# BACKENDS overrides the taylormap backends measured (e.g. "--backend gpu --backend cpu")
backends="--backend cpu --backend reference"
[ "$DEVICE" = cuda ] && backends="--backend gpu --backend cpu --backend reference"
backends=${BACKENDS:-$backends}
$TAYLORMAP bench --model "$MODEL" --input "$OUT/x.npy" --composite "$COMPOSITE" $backends \
  --batch-sizes "$BATCHES" --json | tee "$OUT/lines.jsonl"
for dtype in float32 float64; do
  $PYTHON benchmarks/zennit_peer.py --model "$MODEL" --input "$OUT/x.npy" --composite "$COMPOSITE" \
    --bench --batch-sizes "$BATCHES" --device "$DEVICE" --dtype $dtype | tee -a "$OUT/lines.jsonl"
done
case "$COMPOSITE" in
lrp-zero | epsilon-plus)
  if (cd benchmarks && $PYTHON -c 'import captum_peer' 2>/dev/null); then
    for dtype in float32 float64; do
      $PYTHON benchmarks/captum_peer.py --model "$MODEL" --input "$OUT/x.npy" --composite "$COMPOSITE" \
        --bench --batch-sizes "$BATCHES" --device "$DEVICE" --dtype $dtype | tee -a "$OUT/lines.jsonl"
    done
  else
    echo "(Captum not importable: no Captum lines)"
  fi
  ;;
esac
case "$COMPOSITE" in
deep-taylor-bounded | lrp-zero)
  if [ -n "${INNVESTIGATE_PYTHON:-}" ]; then
    "$INNVESTIGATE_PYTHON" benchmarks/innvestigate_peer.py --model "$MODEL" --input "$OUT/x.npy" \
      --composite "$COMPOSITE" --bench --batch-sizes "$BATCHES" 2>/dev/null | tee -a "$OUT/lines.jsonl"
  fi
  ;;
esac
$PYTHON - "$OUT/lines.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["batch_size"], {})[f'{r["backend"]} ({r["adapter"]})'] = r["heatmaps_per_second"]
for batch, runs in sorted(by.items()):
    is_peer = lambda k: k.startswith(("zennit", "captum", "innvestigate"))
    peers = {k: v for k, v in runs.items() if is_peer(k)}
    for name, v in runs.items():
        if is_peer(name):
            continue
        for peer, p in peers.items():
            print(f"batch {batch}: {name} / {peer} = {v / p:.2f}x")
PY
