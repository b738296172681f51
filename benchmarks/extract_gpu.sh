#!/usr/bin/env bash
# Issue 8's measurement: `fs bench-extract` on synthetic videos, per number of videos in flight, with software and
# hardware (--hwaccel cuda) decoding; ends with one table of every run and the checks a first GPU run must pass
# (docs/extraction.md, "Measuring extraction on a GPU machine").
#
#   bash benchmarks/extract_gpu.sh [OUT_DIR]          # default OUT_DIR: bench-extract
#   GPUS=0 bash benchmarks/extract_gpu.sh             # the same on one CPU worker, small sizes (about a minute)
#
# Environment: GPUS (1; 0 runs one CPU worker), VIDEOS (50; 4 with GPUS=0), CLASSES (10; 2), SECONDS_PER_VIDEO (120; 12),
# IN_FLIGHT ("4 8 16"; "2"), HWACCELS ("none cuda"; "none"), DESCRIPTORS (all four; image,audio,fused), BATCH_SIZE
# (16), FS (the fs command: fs on PATH, else the repo's .venv/bin/fs), PYTHON (python3), WEIGHTS (random: the GPU
# machines cannot download weights, and the timing does not depend on them), DATA (where the synthetic videos go:
# $TMPDIR/fs-extract-gpu-data, outside OUT_DIR, so that OUT_DIR holds only the figures to bring back).
# A run that fails is said and the others still run; the checks then report it.
set -euo pipefail
OUT=${1:-bench-extract}
GPUS=${GPUS:-1}
if [ "$GPUS" -gt 0 ]; then
  VIDEOS=${VIDEOS:-50}; CLASSES=${CLASSES:-10}; LEN=${SECONDS_PER_VIDEO:-120}; IN_FLIGHT=${IN_FLIGHT:-"4 8 16"}
  HWACCELS=${HWACCELS:-"none cuda"}; DESCRIPTORS=${DESCRIPTORS:-image,audio,fused,r2p1d}
else
  VIDEOS=${VIDEOS:-4}; CLASSES=${CLASSES:-2}; LEN=${SECONDS_PER_VIDEO:-12}; IN_FLIGHT=${IN_FLIGHT:-2}
  HWACCELS=${HWACCELS:-none}; DESCRIPTORS=${DESCRIPTORS:-image,audio,fused}
fi
BATCH_SIZE=${BATCH_SIZE:-16}
WEIGHTS=${WEIGHTS:-random}
here=$(cd "$(dirname "$0")/.." && pwd)
FS=${FS:-$(command -v fs || echo "$here/.venv/bin/fs")}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "$GPUS" -gt 0 ]; then
  if ! nvidia-smi -L >"$OUT/gpus.txt" 2>&1; then
    echo "GPUS=$GPUS but nvidia-smi finds no GPU here ($(head -1 "$OUT/gpus.txt")); run with GPUS=0" >&2
    exit 2
  fi
  echo "== GPUs"; cat "$OUT/gpus.txt"
  where=(--gpus "$GPUS")
else
  where=(--workers 1)
fi
DATA=${DATA:-${TMPDIR:-/tmp}/fs-extract-gpu-data}
"$FS" synth --out "$DATA" --videos "$VIDEOS" --classes "$CLASSES" --seconds "$LEN:$LEN" --seed 0 >/dev/null
runs=()
for k in $IN_FLIGHT; do
  for hw in $HWACCELS; do
    name="inflight$k-$hw"
    hwopt=(); [ "$hw" != none ] && hwopt=(--hwaccel "$hw")
    echo "== $name"
    runs+=("$name")
    rm -f "$OUT/$name.json"
    "$FS" bench-extract --manifest "$DATA/manifest.csv" "${where[@]}" --in-flight "$k" "${hwopt[@]}" \
      --batch-size "$BATCH_SIZE" --descriptors "$DESCRIPTORS" --weights "$WEIGHTS" --teacher-weights "$WEIGHTS" \
      --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt" || echo "== $name FAILED (see $OUT/$name.txt)"
  done
done
"$PYTHON" - "$OUT" "$GPUS" "$VIDEOS" "${runs[@]}" <<'PY'
import json, math, pathlib, sys

out, gpus, videos = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rows, problems = [], [f"{name}: no figures (the run failed: see {name}.txt)" for name in sys.argv[4:]
                      if not (out / f"{name}.json").is_file()]
for f in sorted(out / f"{name}.json" for name in sys.argv[4:] if (out / f"{name}.json").is_file()):
    r = json.loads(f.read_text())
    clips = next((m["items_per_second"] for m in r["models"] if m["name"].startswith("R(2+1)D")), None)
    decoded = ", ".join(f"{n} {d}" for d, n in r.get("extraction_decoders", {}).items())
    rows.append([f.stem, str(r["videos"]), str(r["failed"]), decoded, f"{r['decode_only_video_s_per_s']:.1f}",
                 f"{r['extraction_video_s_per_s']:.1f}", f"{100 * r['ratio_extraction_to_ceiling']:.1f}",
                 str(r.get("gpu_utilisation_percent", "-")), f"{clips:.1f}" if clips else "-",
                 str(r.get("peak_gpu_memory_mb_per_worker", "-")), str(r.get("peak_gpu_memory_used_mb_per_gpu", "-")),
                 f"{r['peak_host_memory_mb_per_worker']:.0f}"])
    # what a run must show to be trusted (docs/extraction.md): say each failure, never average it away
    if r["failed"]:
        problems.append(f"{f.stem}: {r['failed']} video(s) failed (see {f.stem}.txt)")
    if r["videos"] != videos:
        problems.append(f"{f.stem}: {r['videos']} videos measured, {videos} synthesised")
    if sum(r.get("extraction_decoders", {}).values()) != r["videos"] - r["failed"]:
        problems.append(f"{f.stem}: decoders recorded for {sum(r.get('extraction_decoders', {}).values())} videos")
    if not 0 < r["ratio_extraction_to_ceiling"] <= 1.1:
        problems.append(f"{f.stem}: extraction / ceiling {r['ratio_extraction_to_ceiling']:.2f}, outside (0, 1.1]")
    if f.stem.endswith("-cuda") and set(r.get("extraction_decoders", {})) != {"cuda"}:
        problems.append(f"{f.stem}: --hwaccel cuda but decoded {r.get('extraction_decoders')} "
                        f"({r.get('hwaccel_error') or 'no reason given'})")
    if gpus:
        util = r.get("gpu_utilisation_percent")
        if not isinstance(util, (int, float)) or r.get("gpus_sampled") != gpus:
            problems.append(f"{f.stem}: GPU utilisation {util} from {r.get('gpus_sampled')} GPU(s), {gpus} in use")
        elif not 0 < util <= 100:
            problems.append(f"{f.stem}: GPU utilisation {util} %")
        used, torch_mb = r.get("peak_gpu_memory_used_mb_per_gpu"), r.get("peak_gpu_memory_mb_per_worker", 0)
        if not isinstance(used, (int, float)) or used < torch_mb or not torch_mb:
            problems.append(f"{f.stem}: GPU memory nvidia-smi {used} MB vs torch {torch_mb} MB (expect 0 < torch <= "
                            f"nvidia-smi)")
        if any(m["per"] != "GPU" for m in r["models"]):
            problems.append(f"{f.stem}: model rates not measured on the workers' GPUs")
head = ["run", "videos", "failed", "decoded", "ceiling video-s/s", "extraction video-s/s", "ratio %",
        "GPU util % (GPUs in use)", "R(2+1)D clips/s alone per GPU (CPU worker)", "peak torch GPU MB per worker",
        "peak nvidia-smi GPU MB per GPU", "peak host MB per worker"]
print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
for r in rows:
    print("| " + " | ".join(r) + " |")
print("checks: " + ("all passed" if not problems else f"{len(problems)} FAILED"))
for p in problems:
    print(f"  FAILED {p}")
sys.exit(1 if problems else 0)
PY
