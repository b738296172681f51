#!/usr/bin/env bash
# Issue 8's measurement: `fs bench-extract` on 50 synthetic two-minute videos, per number of videos in flight, with
# software and hardware (--hwaccel cuda) decoding; ends with one table of every run.
#
#   bash benchmarks/extract_gpu.sh [OUT_DIR]          # default OUT_DIR: bench-extract
#
# Environment: VIDEOS (50), CLASSES (10), SECONDS_PER_VIDEO (120), GPUS (1; 0 runs one CPU worker), IN_FLIGHT ("4 8 16"),
# HWACCELS ("none cuda"), DESCRIPTORS (all four), FS (the fs command), PYTHON (python3), WEIGHTS (random: the GPU
# machines cannot download weights, and the timing does not depend on them).
set -euo pipefail
OUT=${1:-bench-extract}
VIDEOS=${VIDEOS:-50}
CLASSES=${CLASSES:-10}
LEN=${SECONDS_PER_VIDEO:-120}
GPUS=${GPUS:-1}
IN_FLIGHT=${IN_FLIGHT:-"4 8 16"}
HWACCELS=${HWACCELS:-"none cuda"}
DESCRIPTORS=${DESCRIPTORS:-image,audio,fused,r2p1d}
WEIGHTS=${WEIGHTS:-random}
FS=${FS:-fs}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
$FS synth --out "$OUT/data" --videos "$VIDEOS" --classes "$CLASSES" --seconds "$LEN:$LEN" --seed 0
if [ "$GPUS" -gt 0 ]; then where=(--gpus "$GPUS"); else where=(--workers 1); fi
for k in $IN_FLIGHT; do
  for hw in $HWACCELS; do
    name="inflight$k-$hw"
    hwopt=(); [ "$hw" != none ] && hwopt=(--hwaccel "$hw")
    echo "== $name"
    $FS bench-extract --manifest "$OUT/data/manifest.csv" "${where[@]}" --in-flight "$k" "${hwopt[@]}" \
      --descriptors "$DESCRIPTORS" --weights "$WEIGHTS" --teacher-weights "$WEIGHTS" --out "$OUT/$name.json" \
      2>&1 | tee "$OUT/$name.txt"
  done
done
"$PYTHON" - "$OUT" <<'PY'
import json, pathlib, sys

rows = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("inflight*.json")):
    r = json.loads(f.read_text())
    clips = next((m["items_per_second"] for m in r["models"] if m["name"].startswith("R(2+1)D")), None)
    rows.append([f.stem, str(r["videos"]), f"{r['video_seconds'] / 60:.1f}", f"{r['decode_only_video_s_per_s']:.1f}",
                 f"{r['extraction_video_s_per_s']:.1f}", f"{100 * r['ratio_extraction_to_ceiling']:.1f}",
                 str(r.get("gpu_utilisation_percent", "-")), f"{clips:.1f}" if clips else "-",
                 f"{r.get('peak_gpu_memory_mb_per_worker', 0):.0f}", f"{r['peak_host_memory_mb_per_worker']:.0f}"])
head = ["run", "videos", "video-min", "ceiling video-s/s", "extraction video-s/s", "ratio %", "GPU util %",
        "R(2+1)D clips/s alone", "peak GPU MB", "peak host MB"]
print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
