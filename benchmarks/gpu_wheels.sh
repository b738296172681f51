#!/usr/bin/env bash
# Fetch, here, the wheels fs needs that the lent GPU machine's image lacks (its python3 is 3.12 with torch, pandas,
# click, tqdm, matplotlib, fsspec, psutil, msgpack, pyyaml, toolz, cloudpickle ...; see the device library's
# KINDS.md) into ./.whl (git-ignored, about 40 MB: under the 64 MiB a device call may carry). Then, on the device:
#
#   run(carry=[".whl"], command="bash benchmarks/gpu_session.sh")
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/python -m pip}
rm -rf .whl && mkdir -p .whl
# pinned to what the project is tested with here (zarr 3.1, numcodecs 0.16, dask/distributed 2026.8), one version each
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl \
  zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 \
  dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1 \
  ffmpeg-python==0.2.0 future==1.0.0 imageio-ffmpeg==0.5.1
ls .whl
du -sh .whl
