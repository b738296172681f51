"""``fs bench`` and the trainers at the design card's scale, on a store of ``benchmarks/scale_store.py``.

    .venv/bin/python benchmarks/scale_bench.py --videos N [--store PATH] [--device cpu|cuda] [--only ...]
        [--timeout SECONDS] [--out results.json] [--seeded | --trained]

1. The store: ``fs-data/scale-N.zarr`` is generated (``scale_store.py --generate-only``) and packed when missing.
2. Checkpoints (``fs-data/scale-N.bench-runs/``): every network the bench reads, at the trainers' default sizes
   (the per-step heads, the five ``fs train-skim`` models, the SCSampler set, the three AVGN variants) with seeded,
   untrained weights (``--seeded``, the default): what ``fs bench`` costs does not depend on the weights' values, and
   training the whole set on a 2-core machine would take longer than the figures. ``--trained`` uses the checkpoints
   found there instead.
3. Each command in its own process (wall time and its own peak RSS, as ``scale_store.py`` measures them):
   ``fs bench --methods UNIFORM,DENSE,SKIM --no-sweep`` and the full ``fs bench`` (every method, the sweep, the
   training-split pass), both with ``--device``. Prints a table and a markdown table for docs/scale.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scale_store import Row, fs_command, run_timed     # noqa: E402


def seeded_checkpoints(store_path: Path, runs: Path) -> list[str]:
    """Every checkpoint ``fs bench`` reads, built at the trainers' default sizes from fixed seeds (not trained)."""
    from featurestore.constants import FEATURE_DIMS
    from featurestore.store import FeatureStore
    from models.baselines import StepClassifier
    from pipelines.checkpoints import save_checkpoint
    from pipelines.data import student_fusion
    from pipelines.train_avgn import build_avgn, checkpoint_name as avgn_name
    from pipelines.train_head import checkpoint_name as head_name
    from pipelines.train_sampler import build_sampler, checkpoint_name as sampler_name
    from pipelines.train_skim import SKIM_MODELS, build_skim_model
    from tests.bench_rows import seeded

    store = FeatureStore(store_path)
    n_cls = len(store.attrs["classes"])
    seed = iter(range(100, 200))
    written = []
    features = ("fused", "r2p1d") if store.has_descriptor("r2p1d") else ("fused",)
    for feature in features:
        written.append(head_name(feature))
        save_checkpoint(runs, head_name(feature), "head", seeded(StepClassifier(FEATURE_DIMS[feature], n_cls),
                                                                   next(seed)), store,
                        {"features": feature, "in_dim": FEATURE_DIMS[feature], "num_classes": n_cls}, [])
    for model in SKIM_MODELS:
        written.append(model)
        net = seeded(build_skim_model(model, student_fusion(store), n_cls), next(seed))
        save_checkpoint(runs, model, model, net, store, {"model": model, "steps": 10, "num_classes": n_cls}, [])
    for modality, loss in (("visual", "ac"), ("visual", "sal-cl"), ("visual", "sal-rank"), ("audio", "ac"),
                           ("audio", "sal-cl"), ("audio", "sal-rank"), ("av", "sal-cl")):
        written.append(sampler_name(modality, loss))
        save_checkpoint(runs, sampler_name(modality, loss), "sampler",
                        seeded(build_sampler(modality, loss, n_cls), next(seed)), store,
                        {"modality": modality, "loss": loss, "margin": 1.0, "num_classes": n_cls,
                         "clip_classifier": features[-1]}, [])
    for audio_tokens, mask_loss in ((True, True), (False, True), (True, False)):
        cfg = {"num_classes": n_cls, "dim": 128, "layers": 2, "heads": 4, "t": 16, "k": 4,
               "audio_tokens": audio_tokens, "mask_loss": mask_loss}
        written.append(avgn_name(audio_tokens, mask_loss))
        save_checkpoint(runs, avgn_name(audio_tokens, mask_loss), "avgn", seeded(build_avgn(cfg), next(seed)),
                        store, cfg, [])
    return written


OPERATIONS = {
    "bench UNIFORM,DENSE,SKIM --no-sweep": ["--methods", "UNIFORM,DENSE,SKIM", "--no-sweep"],
    "bench (every method, sweep, training split)": [],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, required=True)
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="", help="comma list: time only the operations starting with one of these")
    ap.add_argument("--timeout", type=float, default=0, help="kill a timed command after this many seconds")
    ap.add_argument("--trained", action="store_true", help="use the checkpoints in the runs folder as they are")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    store = args.store or REPO / "fs-data" / f"scale-{args.videos}.zarr"
    runs = store.with_suffix(".bench-runs")
    if not (store / "zarr.json").is_file():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale_store.py"), "--videos", str(args.videos),
                        "--store", str(store), "--generate-only"], check=True)
    subprocess.run(fs_command("pack", str(store)), check=True, cwd=REPO)
    if not args.trained:
        print(f"seeded checkpoints in {runs}: {', '.join(seeded_checkpoints(store, runs))}", file=sys.stderr)
    rows: list[Row] = []
    for name, extra in OPERATIONS.items():
        if args.only and not any(name.startswith(o.strip()) for o in args.only.split(",")):
            continue
        cmd = fs_command("bench", "--store", str(store), "--runs", str(runs), "--device", args.device,
                         "--out", str(runs / ("bench-" + ("few" if extra else "all"))), *extra)
        row, _ = run_timed(name, cmd, runs / "logs" / f"{name.split()[0]}-{'few' if extra else 'all'}.log",
                           args.timeout or None)
        rows.append(row)
        print(f"{name:<46} {row.seconds if row.seconds is not None else '-':>9} s  "
              f"{row.peak_rss_gb if row.peak_rss_gb is not None else '-':>6} GB  rc {row.rc} {row.notes}",
              file=sys.stderr)
    print(f"\n| operation (N = {args.videos}, --device {args.device}) | wall | peak RSS |\n|---|---|---|")
    for r in rows:
        print(f"| `fs {' '.join(r.command[1:2])} ... {r.operation[6:]}` | "
              f"{'-' if r.seconds is None else f'{r.seconds:.0f} s'} | "
              f"{'-' if r.peak_rss_gb is None else f'{r.peak_rss_gb:.2f} GB'} |" + (f" {r.notes}" if r.notes else ""))
    if args.out:
        args.out.write_text(json.dumps({"videos": args.videos, "device": args.device, "machine": platform.node(),
                                        "rows": [r.__dict__ for r in rows]}, indent=1))
    return 0 if all(r.rc == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
