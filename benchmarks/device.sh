#!/usr/bin/env bash
# The whole GPU check as one script, for a lent machine with a GPU and no Rust toolchain: the
# parity suite first, then the throughput issue's three targets (bench at batch 4096 beside
# Zennit on the same GPU, end-to-end explain with PNGs), then GPU and CPU engine vs the f64
# reference on the bundled model for every composite, then the rest (bench per backend and batch
# size, earlier builds, per-kernel times, end to end without PNGs and into /dev/shm, the disk,
# the options' effects, and `eval` on the GPU against the CPU engine), most telling first, so
# that a run cut short by the device's time limit keeps what matters. Every figure in
# BENCHMARKS.md's GPU sections comes from a run of this script.
#
#   benchmarks/device.sh prepare   # here, with cargo: builds into .dev/ (gzipped; this build and, for a
#                                  # before/after, BASES: default the fastest build measured on the
#                                  # H200, the last one before specialised convolutions, the last
#                                  # before heatmap files were made ahead, the last before
#                                  # kept z', the last before fused max pooling and the last
#                                  # with wgpu's loop counters and division guards in the
#                                  # shaders), fetches .gl/ and .whl/
#   benchmarks/device.sh run       # on the device, from the repository root (carry .dev .gl .whl)
#
# `run` prints everything on stdout and, where the device tool sets $OUT, also into
# $OUT/device.log, which comes back whole (the tool's reply keeps only the output's tail).
#
# `prepare` needs network access to Debian's and PyPI's mirrors once (the Vulkan loader is not
# installed on the lent machines; the NVIDIA driver's ICD is). `run` prints everything on stdout;
# it needs python3 with numpy, onnx and torch on the device (Zennit and Captum are installed from .whl/).
set -u
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  set -e
  rm -rf .dev # only what this run prepares is carried to the device
  mkdir -p .dev .gl .whl
  cargo build --release
  cp target/release/taylormap .dev/taylormap
  parity=$(cargo test --no-run --test parity --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "parity" and m.get("executable"):
        print(m["executable"])')
  cp "$parity" .dev/parity
  # Earlier builds for a before/after on the same card in one session: the fastest build measured
  # on the H200 (BENCHMARKS.md, second run: 301k heatmaps/s at 4096; its bench times throughput
  # without timestamps, as this one does), and the last build before the convolution pipelines
  # were specialised per layer (what the specialisation gains on a real GPU), and the last build
  # before explain made its heatmap files while the backend starts (what that gains end to end),
  # the last before convolutions kept z' from their forward pass (what that gains), the last
  # before max pooling's relevance step went into the convolution's s step (with alpha-beta's
  # kept z' and the CPU engine's 2 x 2 pooling), and the last whose shaders carried wgpu's loop
  # counters and integer-division guards.
  : > .dev/base-revisions
  for rev in ${BASES:-d244951 a0039ba 3241467 6524c82 891b6ea e4d15ef}; do
    base=$(git rev-parse --short "$rev^{commit}")
    benchmarks/revisions.sh "$base" 0
    cp "target/revisions/taylormap-$base" ".dev/taylormap-$base"
    strip ".dev/taylormap-$base"
    echo "$base" >> .dev/base-revisions
  done
  strip .dev/taylormap .dev/parity
  # Compressed for the trip (8.8 MB a binary, 3.6 MB gzipped): the working tree that travels,
  # carried paths included, is limited to 64 MiB, and seven binaries as they are came to 62 MB.
  gzip -9 -f .dev/taylormap .dev/parity .dev/taylormap-*
  # downloaded once (kept between runs)
  ls .gl/libvulkan1_*.deb >/dev/null 2>&1 ||
    (cd .gl && apt-get download -oAPT::Architecture=amd64 libvulkan1 libglvnd0 libegl1 libgl1 \
      libgles2 libglx0 libopengl0)
  ls .whl/zennit-*.whl >/dev/null 2>&1 || python3 -m pip download --no-deps -d .whl zennit==0.5.1
  ls .whl/captum-*.whl >/dev/null 2>&1 || python3 -m pip download --no-deps -d .whl captum==0.9.0 tqdm
  travels=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null |
    tail -1; du -cb .dev .gl .whl | tail -1) | awk '{ s += $1 } END { print s }')
  echo "the working tree with .dev .gl .whl: $((travels / 1048576)) MiB of the device's 64"
  if [ "$travels" -gt $((64 * 1048576)) ]; then
    echo "too large to travel: fewer BASES" >&2
    exit 1
  fi
  echo "ready: run on the device with carry [\".dev\", \".gl\", \".whl\"]"
  ;;
run)
  if [ -n "${OUT:-}" ] && [ -z "${DEVICE_LOG:-}" ]; then
    DEVICE_LOG=1 bash benchmarks/device.sh run 2>&1 | tee "$OUT/device.log"
    exit "${PIPESTATUS[0]}"
  fi
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  gzip -d -f .dev/*.gz
  ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f $icd ] && export VK_DRIVER_FILES=$icd
  pip install --quiet --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  B=.dev/taylormap
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  nproc
  echo "== adapters"; $B adapters
  echo "== parity suite (every f32 engine vs the reference; the GPU is required)"
  TAYLORMAP_REQUIRE_GPU=1 timeout 300 .dev/parity 2>&1 | grep -E "^test |test result|panicked" | tail -20
  # The issue's three targets first (GPU heatmaps/s at 4096, the ratio to Zennit, end to end
  # with PNGs), so that a run cut short by the time limit still has them.
  echo "== peers: taylormap vs Zennit on the same GPU (and the CPU engine vs Zennit on CPU)"
  TAYLORMAP=$B BACKENDS="--backend gpu --backend cpu" benchmarks/compare.sh assets/models/mnist-cnn.onnx deep-taylor-bounded 64,1024,4096 cuda
  echo "== explain end-to-end, 10,000 images (GPU), with PNGs (without, and into /dev/shm, further down)"
  $B explain --backend gpu --quiet --out /tmp/e2e-png --composite deep-taylor-bounded | tail -9
  echo "== bundled model, first 2000 images: GPU and CPU engine vs the f64 reference"
  for c in deep-taylor deep-taylor-bounded epsilon-plus epsilon-gamma-box epsilon-alpha2-beta1 lrp-zero gradient-x-input; do
    for b in reference gpu cpu; do
      $B explain --backend $b --no-png --quiet --limit 2000 --composite $c --target label \
        --out /tmp/$b-$c >/dev/null 2>/tmp/$b-$c.err || cat /tmp/$b-$c.err
    done
    python3 - $c <<'PY'
import csv, sys
import numpy as np
c = sys.argv[1]
def load(b):
    r = np.load(f"/tmp/{b}-{c}/relevance.npy").reshape(2000, -1).astype(np.float64)
    s = np.array([float(x["score"]) for x in csv.DictReader(open(f"/tmp/{b}-{c}/summary.csv"))])
    return r, s
ref, sref = load("reference")
for b in ("gpu", "cpu"):
    r, s = load(b)
    err = np.linalg.norm(r - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-30)
    se = np.abs(s - sref) / np.maximum(np.abs(sref), 1.0)
    print(f"{c:22s} {b}: relL2 max {err.max():.2e} median {np.median(err):.2e} "
          f">1e-4: {(err > 1e-4).sum()}  score err max {se.max():.2e}")
PY
  done
  echo "== bench: GPU (with per-stage times), CPU engine, reference"
  $B bench --backend gpu --backend cpu --composite deep-taylor-bounded \
    --batch-sizes 1,64,1024,4096,16384 --min-seconds 2
  echo "== bench: earlier builds ($(tr '\n' ' ' < .dev/base-revisions)) vs this one, alternating"
  for round in 1 2; do
    for bin in $(sed 's|^|.dev/taylormap-|' .dev/base-revisions) $B; do
      echo "$bin"
      $bin bench --backend gpu --composite deep-taylor-bounded --batch-sizes 1024,4096 --min-seconds 2
    done
  done
  echo "== bench: GPU time per kernel (each dispatch in its own pass): which kernels to tune"
  $B bench --backend gpu --composite deep-taylor-bounded --batch-sizes 1024,4096 --min-seconds 1 --kernel-times
  echo "== explain end-to-end: earlier builds vs this one, alternating, each into a new folder; wall: the whole command"
  benchmarks/e2e.sh 2 /tmp "$(sed 's|^|.dev/taylormap-|' .dev/base-revisions | tr '\n' ' ') $B" \
    --backend gpu --composite deep-taylor-bounded
  echo "(the same into /dev/shm: how much of the PNG time is the disk's file creation)"
  $B explain --backend gpu --quiet --out /dev/shm/e2e-png --composite deep-taylor-bounded | tail -3
  $B explain --backend gpu --quiet --no-png --out /tmp/e2e --composite deep-taylor-bounded | tail -9
  echo "== disk probe: what explain's writing costs on this machine's disk and on tmpfs, without the engine"
  python3 benchmarks/disk_probe.py /tmp /dev/shm
  echo "== explain end-to-end, 10,000 images (CPU engine on every core), with PNGs"
  $B explain --backend cpu --quiet --out /tmp/e2e-cpu --composite deep-taylor-bounded | tail -9
  echo "== bench: GPU with f32 upload instead of bytes (what the byte upload gains)"
  $B bench --backend gpu --composite deep-taylor-bounded --batch-sizes 1024,4096 --min-seconds 2 --f32-upload
  echo "== bench: GPU batches as 1 (default: streamed batches overlap each other), 2 and 4 submissions"
  for k in 1 2 4; do
    $B bench --backend gpu --composite deep-taylor-bounded --batch-sizes 4096,16384 --min-seconds 2 --submissions $k
  done
  echo "== peers: epsilon-plus (which Captum can express), taylormap vs Zennit and Captum on the same GPU"
  TAYLORMAP=$B BACKENDS="--backend gpu" benchmarks/compare.sh assets/models/mnist-cnn.onnx epsilon-plus 1024,4096 cuda
  echo "== eval: GPU vs CPU engine, 10,000 images, all metrics (AOPC: 2 x 101 forward-only passes per image)"
  for b in gpu cpu; do
    /usr/bin/time -f "$b: %e s wall" $B eval --backend $b --quiet --metric conservation,aopc,target-share \
      --composite deep-taylor-bounded,epsilon-plus | cut -c1-110
  done
  ;;
*)
  echo "usage: benchmarks/device.sh prepare|run" >&2
  exit 2
  ;;
esac
