#!/usr/bin/env bash
# The video-level benchmark of docs/benchmark.md on one extracted store: every trainer with its default (sized) schedule,
# then `fs bench` with the intervals, segment_hit and the s x T sweep.
#
#   bash benchmarks/video_bench.sh STORE RUNS [SUBSAMPLE] [STEPS]       # defaults: 5 10
#
# Regimes used in docs/benchmark.md (seeds the tests do not use): see that page, e.g.
#   fs synth --out fs-data/long216 --videos 216 --classes 8 --seconds 24:40 --seed 8181 --test-fraction 0.3334 \
#            --actions 1:2 --action-seconds 6:14 --action-share 0.6           # long actions, as in ActivityNet
#   fs extract --manifest fs-data/long216/manifest.csv --store fs-data/long216.zarr --descriptors image,audio,fused
set -euo pipefail
STORE=$1
RUNS=$2
SUBSAMPLE=${3:-5}
STEPS=${4:-10}
FS=${FS:-fs}
common=(--store "$STORE" --runs "$RUNS")
mkdir -p "$RUNS"
{
  $FS train-head "${common[@]}"
  $FS train-skim "${common[@]}" --model all                    # the paper's protocol (the default)
  $FS train-skim "${common[@]}" --model skim --protocol fs      # fs's earlier recipe, the SKIM-FS row beside it
  $FS train-sampler "${common[@]}" --modality visual --loss ac
  $FS train-sampler "${common[@]}" --modality audio --loss sal-rank
  $FS train-sampler "${common[@]}" --modality av --loss sal-rank
  # SCSampler's cheap visual sampler on the motion signal (a store extracted with the signal arrays), and its
  # AV(motion) joint training; the bench's AV(motion) combinations pair motion AC with audio SAL-RANK. A store built
  # before the signal arrays has no motion: they fail with that reason and the bench skips their rows
  $FS train-sampler "${common[@]}" --modality motion --loss ac || echo "video_bench: no motion samplers" >&2
  $FS train-sampler "${common[@]}" --modality av-motion --loss sal-rank || echo "video_bench: no motion samplers" >&2
  # SCSampler's cheap audio sampler on the spectrum signal, and AV(cheap) (motion + spectrum) joint training; the
  # bench's AV(cheap) combinations pair motion AC with spectrum SAL-RANK: no ResNet on a step until it is chosen.
  # A store extracted before the spectrum signal has none: they fail with that reason and the bench skips their rows
  $FS train-sampler "${common[@]}" --modality spectrum --loss sal-rank || echo "video_bench: no spectrum samplers" >&2
  $FS train-sampler "${common[@]}" --modality av-cheap --loss sal-rank || echo "video_bench: no spectrum samplers" >&2
  $FS train-avgn "${common[@]}"
  $FS train-avgn "${common[@]}" --no-audio-tokens
  $FS train-avgn "${common[@]}" --no-mask-loss
  $FS bench "${common[@]}" --subsample "$SUBSAMPLE" --steps "$STEPS"
} 2> "$RUNS/train.log" | tee "$RUNS/summary.txt"
