#!/usr/bin/env bash
# The owed GPU figures in one device call, from the repo root of the lent machine, with ./.whl carried (made here by
# benchmarks/gpu_wheels.sh): install the wheels into /tmp/site, put an `fs` on PATH that runs this checkout, and run
# benchmarks/extract_gpu.sh, its table and checks written under $OUT (the folder the device tool brings back).
# ffmpeg is imageio-ffmpeg's static build (fs falls back to it; ffmpeg 4.2.2, whose decoding and frames_at match the
# Debian ffmpeg's here frame for frame): it has no NVDEC, so only software decoding is measured unless HWACCELS says.
#
#   VIDEOS=24 SECONDS_PER_VIDEO=60 IN_FLIGHT="4 16" bash benchmarks/gpu_session.sh     # smaller, to fit 10 minutes
#   SCALE_VIDEOS=20000 bash benchmarks/gpu_session.sh     # also fs bench and a train-skim epoch at 20,000 videos
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing the carried wheels failed (carry .whl: bash benchmarks/gpu_wheels.sh)"; exit 2; }
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p /tmp/fs-bin
printf '#!/bin/sh\nexec python3 -m cli.main "$@"\n' > /tmp/fs-bin/fs
chmod +x /tmp/fs-bin/fs
export PATH="/tmp/fs-bin:$PATH"
out=${OUT:-bench-extract}
mkdir -p "$out"
{ nvidia-smi -L; python3 -c "import torch, zarr, dask, distributed; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'zarr', zarr.__version__, 'dask', dask.__version__)"; fs --version; } 2>&1 | tee "$out/env.txt"
# imageio-ffmpeg's static build (ffmpeg 4.2.2) has no cuda hwaccel: then only the software runs, half the time
if [ -z "${HWACCELS:-}" ]; then
  if python3 -c "from featurestore.decode import hwaccels; raise SystemExit('cuda' not in hwaccels())"; then
    export HWACCELS="none cuda"
  else
    export HWACCELS=none
    echo "this ffmpeg offers no cuda hwaccel: software decoding only (HWACCELS=none)" | tee -a "$out/env.txt"
  fi
fi
bash benchmarks/extract_gpu.sh "$out" 2>&1 | tee "$out/extract_gpu.log"
# the bench and a train-skim epoch at scale on the GPU (issue 24): a fabricated store of SCALE_VIDEOS videos (generated
# on the machine's cores, packed), seeded checkpoints, fs bench --device cuda (few methods, then all), one epoch
if [ -n "${SCALE_VIDEOS:-}" ]; then
  python3 benchmarks/scale_store.py --videos "$SCALE_VIDEOS" --store /tmp/scale.zarr --generate-only --no-progress \
    --jobs "$(nproc)" 2>&1 | tail -2 | tee "$out/scale_generate.log"
  python3 benchmarks/scale_bench.py --videos "$SCALE_VIDEOS" --store /tmp/scale.zarr --device cuda \
    --out "$out/scale_bench.json" 2>&1 | tee "$out/scale_bench.log"
  fs train-skim --store /tmp/scale.zarr --runs /tmp/scale-train --epochs 1 --device cuda 2>&1 | tail -4 \
    | tee "$out/scale_train_skim.log"
fi
