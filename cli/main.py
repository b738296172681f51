"""The ``fs`` command line."""
from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from cli.output import FsGroup, config_option, verbosity_options, write_options
from featurestore import __version__
from featurestore.progress import progress_bar, tracker
from manifests.synth import (DEFAULT_ACTION_SECONDS, DEFAULT_ACTION_SHARE, DEFAULT_ACTIONS, DEFAULT_CLASSES,
                             DEFAULT_CONFOUNDERS, DEFAULT_SECONDS, DEFAULT_VIDEOS)

log = logging.getLogger("cli")


SHOW_DEFAULT = "UNIFORM,AV-ENERGY,SAMPLERS,AVGN,AVGN-SPATIAL,SKIM"
"""fs show's default rows as --help shows them (pipelines.show.SHOW_METHODS, which the command uses; a test keeps the
two equal: importing it here would load torch for every command)."""


def _store_default() -> str:
    """$FS_STORE or fs-store.zarr"""
    from featurestore.store import default_store_path
    return str(default_store_path())


store_option = click.option("--store", default=_store_default, show_default="$FS_STORE or fs-store.zarr",
                            help="Store path.")
def _runs_dir(ctx, param, value: str | None) -> Path:
    from pipelines.checkpoints import runs_dir
    return runs_dir(value)


runs_option = click.option("--runs", default=None, callback=_runs_dir,
                           help="Checkpoint folder (default $FS_RUNS or fs-runs).")


def _fail(e: Exception | str) -> None:
    from featurestore.text import printable

    text = str(e).strip()
    raise click.ClickException(printable(text.splitlines()[0]) if text else type(e).__name__)


def _os_error(e: OSError, store: str) -> str:
    """One line for an OSError met writing ``store`` (read-only, full, no permission)."""
    where = e.filename or store
    return f"cannot write to store {store}: {e.strerror or type(e).__name__} ({where})"


INTERRUPTED_EXIT = 130      # the shell's status for a command stopped by SIGINT (128 + 2)


def _interrupted(message: str) -> None:
    """Stop on Ctrl-C (or a decoder stopped by a signal) with one line and exit status 130, no traceback."""
    click.echo(message, err=True)
    raise click.exceptions.Exit(INTERRUPTED_EXIT)


def _range(cast: type, what: str):
    """A click callback parsing MIN:MAX into a pair of ``cast``."""
    def parse(ctx, param, value: str) -> tuple:
        try:
            lo, hi = (cast(v) for v in value.split(":"))
        except ValueError:
            raise click.BadParameter(f"expected MIN:MAX {what}, got {value!r}") from None
        return lo, hi
    return parse


_seconds_range = _range(float, "in seconds")
_count_range = _range(int, "counts")


@click.group(cls=FsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120,
                                            "terminal_width": 120})
@click.version_option(__version__, prog_name="fs")
@verbosity_options
@config_option(group=True)
def main() -> None:
    """fs: an offline feature store for action recognition in long videos, with audio as a cheap preview.

    Decode each video once into a zarr store of image, audio, fused and R(2+1)D descriptors; trainers and
    benchmarks read only the store.
    """
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: <data root>/synthetic).")
@click.option("--videos", type=int, default=DEFAULT_VIDEOS, show_default=True, help="Number of videos.")
@click.option("--classes", type=int, default=DEFAULT_CLASSES, show_default=True, help="Number of classes.")
@click.option("--seconds", default="{:g}:{:g}".format(*DEFAULT_SECONDS), show_default=True, callback=_seconds_range,
              help="Video length range MIN:MAX in seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed (output is deterministic in it).")
@click.option("--test-fraction", type=float, default=0.25, show_default=True, help="Share of each class in test.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Data root (or $FS_DATA_ROOT).")
@click.option("--jobs", type=int, default=0, show_default="all cores", help="Videos encoded at once (same files "
                                                                             "for any number).")
@click.option("--actions", default="{}:{}".format(*DEFAULT_ACTIONS), show_default=True, callback=_count_range,
              help="Action segments per video MIN:MAX.")
@click.option("--action-seconds", default="{:g}:{:g}".format(*DEFAULT_ACTION_SECONDS), show_default=True,
              callback=_seconds_range, help="Segment length range MIN:MAX in seconds (actions and distractors).")
@click.option("--action-share", type=float, default=DEFAULT_ACTION_SHARE, show_default="1/3",
              help="The most of a video its segments may cover (longer segments are shrunk together).")
@click.option("--confounders", default="{}:{}".format(*DEFAULT_CONFOUNDERS), show_default=True,
              callback=_count_range, help="Class-neutral segments per video MIN:MAX: loud noise bursts, moving noise "
                                          "patches or both, at the loudness and motion of actions.")
@click.option("--confounder-kinds", default="audio,visual,av", show_default=True,
              help="Which confounders to draw from, uniformly: audio (a noise burst), visual (a moving grey blob), "
                   "av (both at once).")
def synth(out, videos, classes, seconds, seed, test_fraction, data_root, jobs, actions, action_seconds,
          action_share, confounders, confounder_kinds) -> None:
    """Generate the synthetic untrimmed audio-visual dataset (H.264/AAC mp4 + manifest.csv)."""
    from manifests.datasets import data_root as resolve_root
    from manifests.synth import generate_synthetic

    out = Path(out) if out else resolve_root(data_root) / "synthetic"
    with progress_bar(videos, "synth") as bar:
        try:
            manifest = generate_synthetic(out, videos, classes, seconds, seed, test_fraction, tracker(bar),
                                          jobs=jobs or os.cpu_count() or 1, actions=actions,
                                          action_seconds=action_seconds, action_share=action_share,
                                          confounders=confounders,
                                          confounder_kinds=tuple(k.strip() for k in confounder_kinds.split(",")
                                                                 if k.strip()))
        except (ValueError, RuntimeError) as e:
            _fail(e)
    click.echo(f"wrote {videos} videos and {manifest}")


@main.command()
@click.argument("dataset", type=click.Choice(["minisports1m", "activitynet", "kinetics-sounds", "ucf101"]))
@click.option("--annotations", required=True, type=click.Path(exists=True),
              help="Official annotation file or folder (partition files, v1.3 JSON, Kinetics CSVs, UCF101 lists).")
@click.option("--video-root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder holding the user's copy of the videos (searched recursively).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of Mini-Sports1M's per-class draw.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Manifest to write (default "
                                                                           "manifests/DATASET.csv).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Paths are written relative to it when under it (default $FS_DATA_ROOT or ./fs-data).")
def manifest(dataset, annotations, video_root, seed, out, data_root) -> None:
    """Build a dataset's manifest from its official annotation files and the videos on disk."""
    from manifests.datasets import MANIFEST_DIR, data_root as resolve_root
    from manifests.builders import AnnotationError, build, write_manifest

    try:
        report = build(dataset, annotations, video_root, seed)
    except AnnotationError as e:
        _fail(e)
    target = Path(out) if out else MANIFEST_DIR / f"{dataset}.csv"
    write_manifest(report, target, resolve_root(data_root))
    click.echo(f"{dataset}: {report.summary()}")
    for line in report.malformed[:10]:
        log.warning(f"  malformed: {line}")
    if len(report.malformed) > 10:
        log.warning(f"  ... and {len(report.malformed) - 10} more malformed lines")
    if report.short_classes:
        shown = ", ".join(f"{k} ({v})" for k, v in list(report.short_classes.items())[:8])
        click.echo(f"  classes short of their quota: {shown}" + (" ..." if len(report.short_classes) > 8 else ""))
    click.echo(f"wrote {target} and {target.with_name(target.stem + '.missing.csv')} "
               f"({len(report.missing)} missing videos listed)")


def extraction_options(f):
    """The options ``fs extract`` and ``fs bench-extract`` share: data, cluster, models and decoding."""
    options = [
        click.option("--dataset", default=None, help="Dataset name: 'synthetic' (default, generated on first use) "
                                                     "or manifests/NAME.csv."),
        click.option("--manifest", type=click.Path(dir_okay=False), default=None,
                     help="A manifest CSV instead of --dataset."),
        click.option("--data-root", type=click.Path(file_okay=False), default=None,
                     help="Data root (or $FS_DATA_ROOT)."),
        click.option("--gpus", type=int, default=0, show_default=True, help="GPUs to use, one Dask worker each."),
        click.option("--workers", type=int, default=1, show_default=True, help="CPU workers (when --gpus is 0)."),
        click.option("--scheduler", default=None, help="Address of an existing Dask scheduler."),
        click.option("--in-flight", type=int, default=0,
                     show_default="cores per GPU (at least 2) with --gpus, else 2",
                     help="Videos decoded at once per worker; their steps share the worker's model batches."),
        click.option("--batch-size", type=int, default=16, show_default=True,
                     help="Clips per teacher batch (4x as many image / audio steps)."),
        click.option("--descriptors", default="image,audio,fused,r2p1d", show_default=True,
                     help="What to compute (comma list); CPU users may skip r2p1d, the costly teacher."),
        click.option("--teacher-weights", default="kinetics400", show_default=True,
                     help="kinetics400 (torchvision weights API), random, or a checkpoint path."),
        click.option("--weights", "student_weights", default="imagenet", show_default=True,
                     help="Student weights: a checkpoint path (e.g. from distillation), imagenet or random."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of any random initialisation."),
        click.option("--hwaccel", default="", help="ffmpeg hardware decoding, e.g. cuda; software decoding (with a "
                                                   "warning) when this ffmpeg or machine cannot."),
        click.option("--decode-threads", type=int, default=0, show_default="ffmpeg's choice",
                     help="ffmpeg decoder threads per video."),
        click.option("--video-timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                     show_default="max(60, 4 x the video's duration)",
                     help="Kill a video's ffmpeg once it has taken this long (time waiting for its frames, summed); "
                          "the video gets a failures row at stage 'timeout'. 0: no limit."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _extract_setup(o: dict, keep_inputs: bool = False, keep_clips: bool = False, spatial_map: bool = False):
    """(dataset, ExtractConfig, Dask client) from the shared extraction options; the manifest is read and validated
    before anything starts."""
    from featurestore.launch import launch
    from manifests.datasets import load_dataset

    ds = load_dataset(o.pop("dataset"), o.pop("manifest"), o.pop("data_root"))
    return (ds, *launch(**o, keep_inputs=keep_inputs, keep_clips=keep_clips, spatial_map=spatial_map))


def _writable_store(store: str):
    """The store ``fs extract`` writes (created when absent), checked writable where videos are written, so that a
    read-only store is refused before any video is decoded."""
    import tempfile

    from featurestore.store import FeatureStore

    fs = FeatureStore(store, mode="a")
    for d in (fs.path, fs.path / "partial"):
        try:
            with tempfile.NamedTemporaryFile(dir=d, prefix=".fs-write-check-"):
                pass
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(d)) from None
    return fs


@main.command()
@extraction_options
@store_option
@click.option("--retry-failed", is_flag=True, help="Retry videos listed in the failures table.")
@click.option("--keep-inputs", is_flag=True, help="Also store each step's first frame and log-mel (for distillation "
                                                   "and refresh without decoding again).")
@click.option("--keep-clips", is_flag=True, help="Also store each step's 16-frame teacher clip (large; small data).")
@click.option("--spatial-map", is_flag=True,
              help="Also store each step's image_map: the student image trunk's 4x4x512 layer4 map (AVGN's global "
                   "feature map, for the spatial glance; no extra compute). Implies --keep-inputs.")
def extract(store, retry_failed, keep_inputs, keep_clips, spatial_map, **options) -> None:
    """Decode each video once and write its descriptors to the zarr store (one Dask task per video)."""
    from featurestore.cluster import ClusterError, close_client
    from featurestore.extract import ExtractionInterrupted, run_extraction
    from manifests.schema import ManifestError
    from featurestore.store import StoreError, store_fault
    from featurestore.weights import WeightsError
    from featurestore.launch import DeviceError

    try:
        # the manifest and options are checked first: a refused run creates no store
        ds, config, client = _extract_setup(options, keep_inputs, keep_clips, spatial_map)
        try:
            fs = _writable_store(store)
            summary = run_extraction(ds.manifest, fs, config, client, ds.name, ds.classes, retry_failed=retry_failed)
        finally:
            close_client(client)
    except (ManifestError, StoreError, WeightsError, ClusterError, DeviceError, ValueError) as e:
        _fail(e)
    except ExtractionInterrupted as e:
        _interrupted(str(e))
    except OSError as e:                  # a read-only store, no permission, a full disk: nothing recorded as failed
        if store_fault(e) is None:
            _fail(f"{type(e).__name__}: {e}")
        _fail(_os_error(e, store) + "; run stopped, nothing recorded as failed")
    except KeyboardInterrupt:
        _interrupted("interrupted: nothing in flight was recorded as failed; the next run goes on from here")
    click.echo(summary.line())
    _print_info(fs.path)


@main.command("bench-extract")
@extraction_options
@click.option("--limit", type=int, default=0, help="Use only the first N videos (0: all).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the figures as JSON here.")
def bench_extract_cmd(limit, out, **options) -> None:
    """Measure decode-only ceiling vs full extraction vs each model alone, in video-seconds per wall-second."""
    from featurestore.bench_extract import bench_extract
    from featurestore.cluster import ClusterError, close_client
    from manifests.schema import ManifestError
    from featurestore.weights import WeightsError
    from featurestore.launch import DeviceError
    from featurestore.store import StoreError

    try:
        ds, config, client = _extract_setup(options)
        df = ds.manifest.head(limit) if limit else ds.manifest
        try:
            result = bench_extract(df, config, client, say=click.echo)
        finally:
            close_client(client)
    except (ManifestError, WeightsError, ClusterError, DeviceError, StoreError, ValueError) as e:
        _fail(e)
    if out:
        Path(out).write_text(json.dumps(result, indent=2, default=lambda o: o.__dict__))
        click.echo(f"wrote {out}")


def _print_info(path, info: dict | None = None) -> None:
    from featurestore.store import FeatureStore

    info = info if info is not None else FeatureStore(path).info()
    models = info["provenance"].get("models", {})
    click.echo(f"store        {info['path']} (schema v{info['schema_version']}, dataset {info['dataset']}, "
               f"{info['classes']} classes)")
    click.echo(f"videos       {info['videos']} complete " +
               " ".join(f"{k}={v}" for k, v in sorted(info["per_split"].items())) +
               f"; {info['failures']} failed; {info['partial']} partial")
    click.echo(f"steps        {info['steps']} from {info['video_minutes']:.2f} video-minutes; "
               f"{info['no_audio']} without audio; {info['short']} shorter than one clip")
    click.echo(f"descriptors  {', '.join(info['descriptors'])}" +
               (f"; inputs kept: {', '.join(info['inputs'])}" if info["inputs"] else ""))
    click.echo(f"signals      {', '.join(info['signals'])}" if info["signals"] else
               "signals      none (a store built before the signal arrays: the energy rows need a new "
               "extraction)")
    click.echo(f"bytes        {info['bytes'] / 1e6:.2f} MB ({info['bytes_per_video_minute'] / 1e3:.1f} kB per "
               f"video-minute)" + (f", of which packed views {info['packed_bytes'] / 1e6:.2f} MB"
                                   if info.get("packed_bytes") else ""))
    for name, rec in models.items():
        click.echo(f"{name:<12} {rec.get('source')} sha256:{rec.get('sha256')}")


@main.command()
@click.argument("store", default=_store_default, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--failures", is_flag=True, help="Also list the failures table.")
def info(store, as_json, failures) -> None:
    """Summarise a store: videos, steps, bytes, failures, provenance."""
    from featurestore.store import FeatureStore, StoreError
    from featurestore.text import printable

    try:
        fs = FeatureStore(store)
        summary = fs.info()
    except StoreError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        _print_info(store, summary)
    if failures:
        df = fs.failures()
        df = df.astype(str).apply(lambda column: column.map(printable))     # ids and errors as escapes
        click.echo(df.to_string(index=False) if len(df) else "no failures")


@main.command()
@click.argument("store", default=_store_default, required=False)
@click.option("--reindex", is_flag=True, help="First rebuild the store index from the video groups.")
def verify(store, reindex) -> None:
    """Check every complete video: all arrays, every chunk on disk and decodable, equal step counts, finite values,
    provenance and schema of the store, and that the index agrees with the groups; lists every problem."""
    from featurestore.packed import packed_problems
    from featurestore.store import FeatureStore, StoreError, verify as verify_store
    from featurestore.text import printable

    try:
        fs = FeatureStore(store)
        with progress_bar(desc="verify") as bar:
            problems, notes = verify_store(fs, tracker(bar), reindex=reindex)
        problems += packed_problems(fs)
    except StoreError as e:
        _fail(e)
    for line in notes:
        click.echo(printable(line))
    for line in problems:
        click.echo(f"problem: {printable(line)}")
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {store}")
    click.echo(f"{store}: no problems")


@main.command()
@click.argument("store", default=_store_default, required=False)
@click.option("--arrays", default="t,image,audio,fused", show_default=True,
              help="Comma list of the descriptors to pack (r2p1d, r2p1d_logits too when the store holds them).")
def pack(store, arrays) -> None:
    """Build the packed per-split training views the trainers and the bench read (they also build them on first
    use, and rebuild them after the store changed)."""
    import time

    from featurestore.packed import pack_store
    from featurestore.store import FeatureStore, StoreError, require_arrays

    names = tuple(a.strip() for a in arrays.split(",") if a.strip())
    t0 = time.perf_counter()
    bars: dict = {}

    def progress(split: str, i: int, n: int) -> None:
        if split not in bars:                 # one bar a split (setdefault built a new bar on every call)
            bars[split] = progress_bar(n, f"pack {split}")
        tracker(bars[split])(i, n)
    try:
        fs = FeatureStore(store)
        require_arrays(fs, names)
        try:
            done = pack_store(fs, names, progress=progress)
        finally:                              # ends the bar's line, so that an error starts a line of its own
            for bar in bars.values():
                bar.close()
    except StoreError as e:
        _fail(e)
    for split, what in done.items():
        click.echo(f"{split:<6} {what}")
    click.echo(f"packed views of {store} up to date for {', '.join(names)} in {time.perf_counter() - t0:.1f} s")


@main.command()
@click.argument("split")
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet", "webdataset"]), required=True,
              help="npy: <out>/<array>/<video_id>.npy + metadata.csv; parquet: <out>/<split>.parquet, a row per video; "
                   "webdataset: <out>/<split>-NNNNNN.tar shards of <id>.<array>.npy + <id>.json.")
@click.option("--arrays", default=None, help="Comma list of arrays (default: t, the signals and the descriptors the "
                                             "store holds; kept inputs frames, mel, clips only when named).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (new or empty).")
@store_option
@click.option("--overwrite", is_flag=True, help="Replace an earlier fs export in --out.")
@click.option("--shard-videos", type=click.IntRange(min=1), default=None, show_default="1000",
              help="webdataset: videos per shard at most.")
@click.option("--shard-mb", type=click.IntRange(min=1), default=None, show_default="1024",
              help="webdataset: a new shard once one holds this many MB.")
def export(split, fmt, arrays, out, store, overwrite, shard_videos, shard_mb) -> None:
    """Write one split's arrays and metadata as files other tools read (numpy, parquet, webdataset), video by video,
    bit for bit equal to the store."""
    from featurestore.store import FeatureStore, StoreError
    from featurestore.text import printable
    from pipelines.export import ExportError, export_split

    names = tuple(a.strip() for a in arrays.split(",") if a.strip()) if arrays is not None else None
    if names == ():
        _fail("--arrays names no array")
    try:
        with progress_bar(desc=f"export {split}") as bar:
            shards = {k: v for k, v in (("shard_videos", shard_videos),
                                        ("shard_bytes", shard_mb << 20 if shard_mb else None)) if v}
            done = export_split(FeatureStore(store), split, fmt, out, names, overwrite, tracker(bar), **shards)
    except (StoreError, ExportError) as e:
        _fail(e)
    except OSError as e:
        _fail(f"cannot write {e.filename or out}: {e.strerror or type(e).__name__}")
    click.echo(f"exported {done.videos} {printable(split)} videos ({', '.join(done.arrays)}) as {fmt} to {done.out}: "
               f"{done.files} files, {done.bytes / 1e6:.1f} MB")


def _milestones(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epochs, got {value!r}") from None


def training_options(epochs: int, batch_size: int, lr: float, milestones: str, sized: bool = False):
    """--epochs, --batch-size, --lr and --milestones with one verb's defaults (SGD with step decay). With ``sized``
    the command also gets ``sized``: True when the user set none of --epochs, --batch-size, --milestones, so the
    trainer may size the default schedule to the split; an explicit schedule is run as given."""
    def decorate(f):
        if sized:
            inner = f

            @functools.wraps(inner)
            def f(*args, **kwargs):
                ctx = click.get_current_context()
                kwargs["sized"] = all(ctx.get_parameter_source(n) == ParameterSource.DEFAULT
                                      for n in ("epochs", "batch_size", "milestones"))
                return inner(*args, **kwargs)
        for opt in reversed([
                click.option("--epochs", type=int, default=epochs, show_default=True,
                             help="Epochs; the default schedule is sized to small splits (smaller batches, more epochs), "
                                  "one set with --epochs/--batch-size/--milestones runs as given" if sized else None),
                click.option("--batch-size", type=int, default=batch_size, show_default=True),
                click.option("--lr", type=float, default=lr, show_default=True),
                click.option("--milestones", default=milestones, show_default=True, callback=_milestones,
                             help="Epochs where lr /= 10.")]):
            f = opt(f)
        return f
    return decorate


def _epoch_reporter(label: str):
    """One info line per epoch (hidden by -q; the epochs' progress bar is the trainer's)."""
    def report(row: dict) -> None:
        log.info(f"{label} epoch {row['epoch']:>3}  loss {row['loss']:.4f}  train acc {100 * row['train_acc']:5.1f}%"
                 f"  lr {row['lr']:.0e}  data {row.get('data_seconds', 0):.2f} s  compute "
                 f"{row.get('compute_seconds', 0):.2f} s")
    return report


@main.command("train-head")
@store_option
@runs_option
@click.option("--features", type=click.Choice(["fused", "r2p1d", "image", "audio"]), default="fused",
              show_default=True, help="Stored descriptor the head classifies.")
@training_options(epochs=15, batch_size=256, lr=0.01, milestones="10", sized=True)
@click.option("--device", default="auto", show_default=True,
              help="auto (the first GPU when one is visible, else the CPU), cpu, or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
def train_head_cmd(store, runs, features, epochs, batch_size, lr, milestones, device, seed, sized) -> None:
    """Train the per-step classifier the baselines average (every training step labelled with its video's label)."""
    from featurestore.store import FeatureStore, StoreError
    from pipelines.train_head import train_head

    try:
        trained = train_head(FeatureStore(store), runs, features, epochs, batch_size, lr, milestones, seed,
                             _epoch_reporter("head"), sized, device)
    except (StoreError, ValueError) as e:
        _fail(e)
    click.echo(trained.summary() + " (accuracy per step)")


@main.command("train-skim")
@store_option
@runs_option
@click.option("--model", default="skim", show_default=True,
              help="Comma list of: skim, skim-visual (G.1), skim-single (G.2), non-recurrent, lstm; or 'all'.")
@training_options(epochs=25, batch_size=256, lr=1e-2, milestones="15,20", sized=True)
@click.option("--steps", type=int, default=10, show_default=True, help="Skimming steps T during training.")
@click.option("--protocol", type=click.Choice(["paper", "fs"]), default="paper", show_default=True,
              help="The skimmers' training (skim, skim-visual, skim-single): paper = Listen to Look's fixed-T training "
                   "(loss on m_T only, one s for the run, BatchNorm statistics of m_T), saved as MODEL.pt; fs = fs's "
                   "recipe (prefix losses m_1..m_{T-1} for early stopping, s drawn from 1,2,5,10 per batch), saved "
                   "as MODEL-fs.pt beside it. lstm and non-recurrent have one recipe ('all' under fs: the skimmers).")
@click.option("--subsample", type=click.IntRange(min=1), default=None,
              help="Indexing subsampling factor s of the whole run under --protocol paper [default: 1, as the "
                   "authors' released command; sparse s is an inference option of fs bench].")
@click.option("--finetune-fusion", is_flag=True, help="Fine-tune the student's fusion Psi too (kept fixed by default, "
                                                       "as the authors' release).")
@click.option("--device", default="auto", show_default=True,
              help="auto (the first GPU when one is visible, else the CPU), cpu, or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
def train_skim_cmd(store, runs, model, epochs, batch_size, lr, milestones, steps, protocol, subsample,
                   finetune_fusion, device, seed, sized) -> None:
    """Train ImgAud-Skimming (or the LSTM / NON-RECURRENT baselines, ablations) on the store's training split."""
    from featurestore.store import FeatureStore, StoreError
    from pipelines.train_skim import SKIM_MODELS, SKIMMERS, checkpoint_name, train_skim

    if model == "all":
        models = list(SKIMMERS if protocol == "fs" else SKIM_MODELS)
    else:
        models = [m.strip() for m in model.split(",") if m.strip()]
    try:
        fs = FeatureStore(store)
        for m in models:
            click.echo(train_skim(fs, runs, m, epochs, batch_size, lr, milestones, steps, finetune_fusion, device,
                                  seed, _epoch_reporter(checkpoint_name(m, protocol)), sized, protocol,
                                  subsample if m in SKIMMERS else None).summary())
    except (StoreError, ValueError) as e:
        _fail(e)


@main.command("train-teacher")
@store_option
@runs_option
@training_options(epochs=10, batch_size=8, lr=1e-3, milestones="6")
@click.option("--clips-per-video", type=int, default=0, show_default=True,
              help="Clips drawn per video each epoch (0: all).")
@click.option("--device", default="auto", show_default=True,
              help="auto (the first GPU when one is visible, else the CPU), cpu, or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
def train_teacher_cmd(store, runs, epochs, batch_size, lr, milestones, clips_per_video, device, seed) -> None:
    """Fine-tune the R(2+1)D-18 teacher on the dataset's classes from stored clips (needs --keep-clips)."""
    from featurestore.store import FeatureStore, StoreError
    from pipelines.checkpoints import checkpoint_path
    from pipelines.distill import train_teacher

    out = checkpoint_path(runs, "teacher")
    try:
        train_teacher(FeatureStore(store), runs, epochs, batch_size, lr, milestones, seed, device,
                      _epoch_reporter("teacher"), clips_per_video)
    except (StoreError, ValueError) as e:
        _fail(e)
    click.echo(f"saved {out} (use it with: fs refresh --teacher {out})")


@main.command("train-distill")
@store_option
@runs_option
@training_options(epochs=60, batch_size=16, lr=1e-3, milestones="30,50")
@click.option("--lambda", "lam", type=float, default=100.0, show_default=True, help="Weight of the KL term.")
@click.option("--finetune", "finetune_epochs", type=int, default=0, show_default=True,
              help="Epochs of fine-tuning on the target labels after distillation.")
@click.option("--device", default="auto", show_default=True,
              help="auto (the first GPU when one is visible, else the CPU), cpu, or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
def train_distill_cmd(store, runs, epochs, batch_size, lr, milestones, lam, finetune_epochs, device, seed) -> None:
    """Distil the stored teacher into the ImgAud2Vid student from stored frames and log-mels (L1 + lambda KL)."""
    from featurestore.store import FeatureStore, StoreError
    from pipelines.checkpoints import checkpoint_path
    from pipelines.distill import train_distill

    out = checkpoint_path(runs, "student")
    try:
        train_distill(FeatureStore(store), runs, epochs, batch_size, lr, milestones, lam, finetune_epochs, seed, device,
                      _epoch_reporter("distill"))
    except (StoreError, ValueError) as e:
        _fail(e)
    click.echo(f"saved {out} (use it with: fs refresh --student {out})")


@main.command()
@store_option
@click.option("--student", default=None, help="Student checkpoint: recompute image, audio, fused from stored inputs.")
@click.option("--teacher", default=None, help="Teacher checkpoint: recompute r2p1d, r2p1d_logits from stored clips.")
def refresh(store, student, teacher) -> None:
    """Recompute descriptors from the inputs kept in the store with new weights, without touching the videos."""
    from featurestore.store import StoreError
    from featurestore.weights import WeightsError
    from featurestore.refresh import refresh as run_refresh

    try:
        with progress_bar(desc="refresh") as bar:
            changed = run_refresh(store, student, teacher, tracker(bar))
    except (StoreError, WeightsError, ValueError) as e:
        _fail(e)
    click.echo(f"refreshed {changed} videos")
    _print_info(store)


@main.command("train-avgn")
@store_option
@runs_option
@click.option("--layers", type=int, default=2, show_default=True, help="Transformer encoder layers.")
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--dim", type=int, default=128, show_default=True, help="Token size D (an AV token is 2D).")
@click.option("--t", "t_steps", type=int, default=16, show_default=True, help="Image-audio pairs sampled per video.")
@click.option("--k", type=int, default=4, show_default=True, help="Steps kept by the ordered-logits loss.")
@training_options(epochs=30, batch_size=16, lr=1e-3, milestones="20", sized=True)
@click.option("--no-audio-tokens", is_flag=True, help="Ablation: AV-TeST sees no audio tokens.")
@click.option("--no-mask-loss", is_flag=True, help="Ablation: train without L_mask.")
@click.option("--spatial", type=click.Choice(["aespa", "pi", "centre", "random", "all"]), default=None,
              help="Train AVGN with its spatial glance too (a store extracted with --keep-inputs --spatial-map): "
                   "AESPA + patch network (aespa), the patch network alone (pi), a centre or random patch (the "
                   "controls), or all four. The temporal glance starts from <runs>/avgn.pt when it exists.")
@click.option("--patch", type=click.IntRange(min=8), default=None, show_default="64",
              help="Patch side P in pixels of the stored 112 x 112 frames (--spatial).")
@click.option("--freeze-temporal", is_flag=True,
              help="With --spatial: keep the trained temporal glance (<runs>/avgn.pt) as it is, so the spatial glance "
                   "sees the steps the temporal rows choose (checkpoint <name>-frozen, its own bench rows).")
@click.option("--device", default="auto", show_default=True,
              help="auto (the first GPU when one is visible, else the CPU), cpu, or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
def train_avgn_cmd(store, runs, layers, heads, dim, t_steps, k, epochs, batch_size, lr, milestones, no_audio_tokens,
                   no_mask_loss, spatial, patch, freeze_temporal, device, seed, sized) -> None:
    """Train AVGN's AV-TeST temporal glance on the store's image and audio descriptors (with --spatial, both
    glances, from the stored frames and global maps too)."""
    from featurestore.store import FeatureStore, StoreError
    from pipelines.train_avgn import SPATIAL_CHECKPOINTS, checkpoint_name, train_avgn, train_avgn_spatial

    if spatial is not None:
        if no_audio_tokens:
            _fail("--no-audio-tokens is an ablation of the temporal glance alone; drop it with --spatial")
        for variant in (SPATIAL_CHECKPOINTS if spatial == "all" else (spatial,)):
            try:
                trained = train_avgn_spatial(FeatureStore(store), runs, variant, layers, heads, dim, t_steps, k,
                                             epochs, batch_size, lr, milestones, not no_mask_loss, seed,
                                             _epoch_reporter(SPATIAL_CHECKPOINTS[variant]), sized, device, patch,
                                             freeze_temporal)
            except (StoreError, ValueError) as e:
                _fail(e)
            click.echo(trained.summary())
        return
    if patch is not None or freeze_temporal:
        _fail("--patch and --freeze-temporal apply to the spatial glance: add --spatial")
    name = checkpoint_name(not no_audio_tokens, not no_mask_loss)
    try:
        trained = train_avgn(FeatureStore(store), runs, layers, heads, dim, t_steps, k, epochs, batch_size, lr,
                             milestones, not no_audio_tokens, not no_mask_loss, seed, _epoch_reporter(name), sized,
                             device)
    except (StoreError, ValueError) as e:
        _fail(e)
    click.echo(trained.summary())


@main.command("train-sampler")
@store_option
@runs_option
@click.option("--modality", type=click.Choice(["audio", "visual", "motion", "spectrum", "av", "av-motion", "av-cheap"]),
              default="audio", show_default=True,
              help="What the sampler reads: the audio or image descriptor, the motion signal (SCSampler's cheap "
                   "visual sampler) or the spectrum signal (its cheap audio sampler); av / av-motion / av-cheap = "
                   "AV-joint-training of image + audio, motion + audio or motion + spectrum samplers, scores "
                   "averaged.")
@click.option("--loss", type=click.Choice(["ac", "sal-cl", "sal-rank", "all"]), default="sal-rank", show_default=True)
@click.option("--margin", type=float, default=1.0, show_default=True, help="SAL-RANK margin eta.")
@click.option("--k-tr", "k_tr", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="SAL-CL: the fraction of each training video's steps labelled salient, K_tr / L (default: 0.25 "
                   "for audio and spectrum, 0.5 otherwise, SCSampler App. C.1).")
@training_options(epochs=15, batch_size=16, lr=0.01, milestones="10", sized=True)
@click.option("--device", default="auto", show_default=True,
              help="auto (the first GPU when one is visible, else the CPU), cpu, or cuda[:N].")
@click.option("--seed", type=int, default=0, show_default=True)
def train_sampler_cmd(store, runs, modality, loss, margin, k_tr, epochs, batch_size, lr, milestones, device, seed,
                      sized) -> None:
    """Train an SCSampler ranker (AC, SAL-CL or SAL-RANK) on one modality's stored descriptors."""
    from featurestore.store import FeatureStore, StoreError
    from pipelines.train_sampler import checkpoint_name, train_sampler

    losses = ["ac", "sal-cl", "sal-rank"] if loss == "all" else [loss]
    try:
        fs = FeatureStore(store)
        for lo in losses:
            trained = train_sampler(fs, runs, modality, lo, margin, epochs, batch_size, lr, milestones, seed,
                                    _epoch_reporter(checkpoint_name(modality, lo)), sized=sized, device=device,
                                    k_tr=k_tr)
            click.echo(trained.summary())
    except (StoreError, ValueError) as e:
        _fail(e)


def _list_methods(ctx, param, value: bool) -> None:
    """``fs bench --list-methods``: the built-in and the installed methods, then exit."""
    if not value or ctx.resilient_parsing:
        return
    from pipelines.methods import list_methods
    click.echo("\n".join(list_methods()))
    ctx.exit()


@main.command()
@store_option
@runs_option
@click.option("--subsample", type=int, default=5, show_default=True, help="Skimmer's indexing subsampling factor s.")
@click.option("--steps", type=int, default=3, show_default=True, help="Skimmer's early-stop step t (1..10).")
@click.option("--methods", default="all", show_default=True,
              help="Comma list of methods: registry names, 'all' (every registry method), installed plug-ins (entry "
                   "points of group fs.methods) or pkg.module:attr builders (e.g. examples.custom_selector:build); "
                   "plug-in rows come after the built-in ones.")
@click.option("--list-methods", is_flag=True, is_eager=True, expose_value=False, callback=_list_methods,
              help="List the built-in and the installed methods, and exit.")
@click.option("--out", default=None, help="Output folder (default <runs>/bench).")
@click.option("--no-sweep", is_flag=True, help="Skip the subsample x steps sweep.")
@click.option("--clip-level", is_flag=True, help="Clip-level comparison instead: teacher vs image-only, audio-only, "
                                                  "image+audio undistilled and distilled (needs --keep-inputs).")
@click.option("--student", default=None, help="With --clip-level: the distilled student (default <runs>/student.pt).")
@click.option("--gallery", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also draw the fs show figure of this many test videos (the most and the least confident, right "
                   "and wrong) into <out>/gallery and report.html.")
@click.option("--device", default="auto", show_default=True,
              help="Where selection runs: auto (the first GPU when torch sees one, else the CPU), cpu or cuda[:N].")
def bench(store, runs, subsample, steps, methods, out, no_sweep, clip_level, student, gallery, device) -> None:
    """Compare every selector on the test split: top-1, mAP, GFLOPs, time, trade-off plot, sweep of s and T;
    report.html beside bench.csv holds them all (and the gallery) in one page."""
    from featurestore.store import FeatureStore, StoreError
    from pipelines.bench import bench_notes, format_table, run_bench
    from pipelines.checkpoints import checkpoint_path
    from pipelines.methods import check_methods, parse_methods

    out_dir = Path(out) if out else runs / "bench"
    if clip_level:
        from pipelines.clip_bench import clip_level_bench
        ckpt = Path(student) if student else checkpoint_path(runs, "student")
        try:
            table = clip_level_bench(FeatureStore(store), ckpt if (student or ckpt.is_file()) else None, out_dir)
        except StoreError as e:
            _fail(e)
        click.echo(table.to_string(index=False, formatters={"top1": lambda v: f"{100 * v:.1f}",
                                                             "gflops_per_clip": lambda v: f"{v:.2f}"}))
        options = write_options(click.get_current_context(), out_dir, {"out": out_dir})
        click.echo(f"(top1 in %; GFLOPs = 2 x multiply-adds) wrote {out_dir / 'clip_bench.csv'} and {options}")
        return

    chosen = parse_methods(methods)
    try:
        check_methods(chosen)             # a plug-in that does not resolve is said before the store is opened
        table = run_bench(FeatureStore(store), runs, out_dir, chosen, subsample, steps, not no_sweep,
                          gallery=gallery, device=device)
    except (StoreError, ValueError) as e:
        _fail(e)
    click.echo(format_table(table) + "\n(top1, mAP, train_top1, segment_hit in %; [95 % bootstrap interval over test "
               "videos]; GFLOPs = 2 x multiply-adds)")
    for line in bench_notes(table):
        click.echo(line)
    options = write_options(click.get_current_context(), out_dir, {"out": out_dir})
    click.echo(f"wrote {out_dir / 'bench.csv'}, {out_dir / 'tradeoff.png'}" +
               ("" if no_sweep or not (out_dir / "sweep.csv").is_file() else
                f", {out_dir / 'sweep.csv'}, {out_dir / 'sweep.png'}") +
               (f", {table.attrs.get('gallery', 0)} figures in {out_dir / 'gallery'}" if gallery else "") +
               f", {out_dir / 'report.html'} and {options} (fs --config {options} bench repeats the run)")


@main.command()
@click.argument("video_id")
@store_option
@runs_option
@click.option("--methods", default=None, show_default=SHOW_DEFAULT,
              help="Comma list of bench methods (one row each: the best of a bench.csv when one exists; plug-ins as "
                   "fs bench --methods takes them) or exact bench row names. Methods without a checkpoint, or whose "
                   "arrays the store lacks, are skipped with a line saying why.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Figure to write (default <runs>/show/VIDEO_ID.png).")
@click.option("--subsample", type=click.IntRange(min=1), default=5, show_default=True,
              help="Skimmer's indexing subsampling factor s.")
@click.option("--steps", type=click.IntRange(1, 10), default=10, show_default=True,
              help="Skimmer's skimming steps T (T - 1 moments looked at).")
def show(video_id, store, runs, methods, out, subsample, steps) -> None:
    """Draw what each method chose in one video: timeline with the action segments, chosen steps, the skimmer's
    attention and modality scores, a contact sheet of the chosen frames, predicted vs true class."""
    from featurestore.store import FeatureStore, StoreError
    from featurestore.text import printable
    from pipelines.methods import METHODS
    from pipelines.show import SHOW_METHODS, show_video

    methods = methods if methods is not None else ",".join(SHOW_METHODS)
    chosen = tuple(m.upper() if m.upper() in METHODS else m for m in (m.strip() for m in methods.split(",")) if m)
    try:
        shown = show_video(FeatureStore(store), runs, video_id, Path(out) if out else None, chosen, subsample, steps)
    except (StoreError, ValueError) as e:
        _fail(e)
    for m in shown.methods:
        click.echo(f"  {m.name:<44} predicted {printable(m.predicted)} ({m.confidence:.2f}), true "
                   f"{printable(m.true)}: {'right' if m.correct else 'WRONG'}; steps {m.steps}")
    for note in shown.notes:
        click.echo(printable(note))
    click.echo(f"wrote {shown.path} ({shown.size[0]}x{shown.size[1]}, {shown.tiles} frames from {shown.frames})"
               if shown.tiles else f"wrote {shown.path} ({shown.size[0]}x{shown.size[1]}, no frames)")


if __name__ == "__main__":
    main()
