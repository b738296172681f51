#!/usr/bin/env bash
# fs bench at the design card's scale: the 2,000- and 20,000-video stores of benchmarks/scale_store.py (generated
# and packed when missing), seeded checkpoints of every method at the trainers' sizes, then
# `fs bench --methods UNIFORM,DENSE,SKIM --no-sweep` and the full `fs bench`, each timed in its own process with its
# peak RSS; and every trainer's epoch beside its FLOP floor on the 2,000-video store (benchmarks/trainer_floor.py).
#
#   bash benchmarks/scale_bench.sh [cpu|cuda] [N ...]        # default: cpu 2000 20000
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
device=${1:-cpu}
shift || true
sizes=${*:-2000 20000}
for n in $sizes; do
  $py benchmarks/scale_bench.py --videos "$n" --device "$device" --out "fs-data/scale-$n.bench-$device.json"
done
if [ -f benchmarks/trainer_floor.py ]; then
  $py benchmarks/trainer_floor.py --store fs-data/scale-2000.zarr --only train-skim:skim
  $py benchmarks/trainer_floor.py --store fs-data/scale-2000.zarr --floor-only
fi
