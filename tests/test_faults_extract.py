"""Issue 23, items 3, 5 and 6: the path a store records, faults of the store (not of the video) and a run stopped
from outside. Extraction runs on a threaded Dask cluster, so monkeypatches reach the workers."""
import errno
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import featurestore.cluster as cluster
import featurestore.extract as extract_mod
import featurestore.store as store_mod
from cli.main import main
from featurestore.cluster import close_client, make_client
from featurestore.config import ExtractConfig
from featurestore.decode import ffmpeg_exe, frames_at, stop_signal
from featurestore.extract import ExtractionInterrupted, VideoResult, run_extraction
from featurestore.store import FeatureStore, StoreError, VideoFeatures
from manifests.datasets import load_dataset
from pipelines.show import step_frames
from tests.conftest import make_video

LIGHT = ExtractConfig(descriptors=("image", "audio", "fused"), student_weights="random", batch_size=4)


def rows(**paths) -> pd.DataFrame:
    return pd.DataFrame([{"video_id": k, "path": str(p), "label": "a", "split": "train", "segments": ""}
                         for k, p in paths.items()])


def extract(store_path, df, client, **kw):
    store = FeatureStore(store_path, mode="a")
    return run_extraction(df, store, LIGHT, client, "t", ["a"], progress=False, **kw), store


@pytest.fixture
def threaded_cli(monkeypatch):
    """``fs extract`` on a cluster of threads of this process (monkeypatches reach its workers)."""
    real = cluster.make_client
    monkeypatch.setattr(cluster, "make_client", lambda **kw: real(**{**kw, "processes": False}))


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- item 3: the store records absolute paths -----------------------------------------------------------------

@pytest.fixture
def two_dirs(tmp_path, video_dir):
    """``home/d3`` (a manifest naming ``videos/x.mp4``) and ``decoy/d3/videos/x.mp4``, another video at the same
    relative path."""
    home, decoy = tmp_path / "home", tmp_path / "decoy"
    (home / "d3" / "videos").mkdir(parents=True)
    (decoy / "d3" / "videos").mkdir(parents=True)
    shutil.copy(video_dir / "tone.mp4", home / "d3" / "videos" / "x.mp4")
    make_video(decoy / "d3" / "videos" / "x.mp4", seconds=2.0, size="320x96", tone_hz=220)
    (home / "d3" / "manifest.csv").write_text("video_id,path,label,split\nx,videos/x.mp4,a,train\n")
    return home, decoy


def test_a_relative_manifest_stores_the_absolute_path_and_show_reads_that_video_from_any_directory(
        tmp_path, two_dirs, client, monkeypatch):
    home, decoy = two_dirs
    true_path = home / "d3" / "videos" / "x.mp4"
    monkeypatch.chdir(home)
    ds = load_dataset(manifest="d3/manifest.csv")               # as `fs extract --manifest d3/manifest.csv`
    summary, store = extract(tmp_path / "s.zarr", ds.manifest, client)
    assert summary.stored == 1
    assert store.video_attrs("x")["path"] == str(true_path)
    video = store.read_video("x", ["t"])
    times = [float(t) for t in video.arrays["t"][:2]]
    want = frames_at(str(true_path), times)
    assert not np.array_equal(want, frames_at(str(decoy / "d3" / "videos" / "x.mp4"), times))
    for cwd in (tmp_path, decoy):        # elsewhere; beside another d3/videos/x.mp4
        monkeypatch.chdir(cwd)
        frames, source = step_frames(store, video, [0, 1])
        assert source == "video", source
        assert np.array_equal(np.stack([frames[0], frames[1]]), want)


def test_workers_are_given_absolute_paths_whatever_the_manifest_holds(tmp_path, two_dirs, client, monkeypatch):
    home, _ = two_dirs
    monkeypatch.chdir(home / "d3")

    def task(row, store_path, config):         # what the worker was given comes back in the failures row
        return VideoResult(row["video_id"], row["path"], False, stage="probe", error="not decoded by this test")

    extract(tmp_path / "s.zarr", rows(x="videos/x.mp4"), client, task=task)
    assert FeatureStore(tmp_path / "s.zarr").failures()["path"].tolist() == [str(home / "d3" / "videos" / "x.mp4")]


def test_an_older_store_with_a_relative_path_says_so_instead_of_showing_another_video(tmp_path, two_dirs,
                                                                                     monkeypatch):
    _, decoy = two_dirs
    store = FeatureStore(tmp_path / "old.zarr", mode="a")
    video = VideoFeatures("x", {"path": "d3/videos/x.mp4", "n_steps": 2},
                          {"t": np.array([0.0, 16 / 30], np.float32)})
    monkeypatch.chdir(decoy)                  # holds another d3/videos/x.mp4
    frames, why = step_frames(store, video, [0, 1])
    assert frames == {}
    assert "relative path d3/videos/x.mp4" in why and "may be another video" in why


# --- item 5: a store that cannot be written stops the run; the video is not a failure -------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_a_store_that_cannot_be_written_stops_the_run_and_the_next_run_completes(tmp_path, video_dir, client,
                                                                                  monkeypatch, code):
    def refused(self, video_id, arrays, attrs):
        raise OSError(code, os.strerror(code), str(self.path / "partial" / video_id / "fused" / "c" / "0" / "0"))

    monkeypatch.setattr(FeatureStore, "_write_partial", refused)
    df = rows(tone=video_dir / "tone.mp4", silent=video_dir / "silent.mp4")
    with pytest.raises(StoreError) as stopped:
        extract(tmp_path / "s.zarr", df, client)
    message = str(stopped.value)
    assert os.strerror(code) in message and "not recorded as failed" in message and "\n" not in message
    store = FeatureStore(tmp_path / "s.zarr")
    assert len(store.failures()) == 0 and store.video_ids() == []
    monkeypatch.undo()                               # space freed: a plain re-run, no --retry-failed
    summary, store = extract(tmp_path / "s.zarr", df, client)
    assert (summary.stored, summary.failed, summary.skipped_failed) == (2, 0, 0)
    assert store.video_ids() == ["silent", "tone"] and len(store.failures()) == 0 and store.partial_ids() == []


def test_fs_extract_on_a_full_disk_is_one_line_and_exits_non_zero(tmp_path, video_dir, manifest_of, threaded_cli,
                                                                   monkeypatch):
    def full(self, video_id, arrays, attrs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path / "partial" / video_id))

    real = FeatureStore._write_partial
    monkeypatch.setattr(FeatureStore, "_write_partial", full)
    m = manifest_of({"tone": (video_dir / "tone.mp4", "a", "train")})
    args = ["extract", "--manifest", m, "--store", tmp_path / "s.zarr", "--descriptors", "image,audio,fused",
            "--weights", "random"]
    res = cli(*args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "tone" in errors[0] and "No space left on device" in errors[0], res.output
    monkeypatch.setattr(FeatureStore, "_write_partial", real)      # space freed (the cluster stays threaded)
    res = cli(*args)
    assert res.exit_code == 0 and "stored 1, failed 0, skipped 0 already stored and 0 failed earlier" in res.output


def test_a_full_disk_while_appending_a_failure_leaves_the_table_whole(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    store.record_failure("a", "/x/a.mp4", "decode", "bad")
    before = store.failures_path.read_bytes()

    def half_then_full(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod, "_write_fully", half_then_full)
    with pytest.raises(StoreError, match="failures.csv .No space left on device.; b is not recorded as failed"):
        store.record_failure("b", "/x/b.mp4", "decode", "worse")
    assert store.failures_path.read_bytes() == before
    monkeypatch.undo()
    store.record_failure("c", "/x/c.mp4", "probe", "gone")
    assert store.failures()["video_id"].tolist() == ["a", "c"]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, video_dir):
    """A store of one video, extracted once; tests damage copies of it."""
    c = make_client(workers=1, processes=False)
    try:
        path = tmp_path_factory.mktemp("small") / "s.zarr"
        run_extraction(rows(silent=video_dir / "silent.mp4"), FeatureStore(path, mode="a"), LIGHT, c, "t", ["a"],
                       progress=False)
    finally:
        close_client(c)
    return path


@pytest.fixture
def damaged(tmp_path, small_store):
    path = tmp_path / "s.zarr"
    shutil.copytree(small_store, path)
    return path


FAILURE_TABLES = {
    "empty": b"",
    "torn": b"video_id,path,stage,error\nold,/x/old.mp4,decode,bad\nnew,/x/new.mp4,dec",
    "garbage": b"\x00\xff\xfe garbage\n\"unclosed,quote\n1,2\n" + bytes(range(256)) + b"\n",
}


@pytest.mark.parametrize("damage", sorted(FAILURE_TABLES))
def test_a_damaged_failures_table_never_stops_a_reader(damaged, damage):
    (damaged / "failures.csv").write_bytes(FAILURE_TABLES[damage])
    store = FeatureStore(damaged)
    assert store.failures()["video_id"].tolist() == (["old"] if damage == "torn" else [])
    assert store.video_ids() == ["silent"]
    for args in (["info", damaged], ["info", damaged, "--failures"], ["info", damaged, "--json"],
                 ["verify", damaged]):
        res = cli(*args)
        assert res.exit_code == 0 and "Traceback" not in res.output, (args, res.output)
    FeatureStore(damaged, mode="a").record_failure("later", "/x/later.mp4", "probe", "gone")
    assert FeatureStore(damaged).failures()["video_id"].tolist()[-1] == "later"


def test_extraction_goes_on_over_a_zero_byte_failures_table_and_an_index_line_without_a_video(damaged, video_dir,
                                                                                              client):
    (damaged / "failures.csv").write_bytes(b"")
    with open(damaged / "index.jsonl", "a") as f:
        f.write('{}\n[]\nnull\n"x"\n{"video_id": 3, "tag": "t"}\n{"video_id": "silent"}\n')
    summary, store = extract(damaged, rows(silent=video_dir / "silent.mp4", tone=video_dir / "tone.mp4"), client)
    assert (summary.skipped_done, summary.stored, summary.failed) == (1, 1, 0)
    assert store.video_ids() == ["silent", "tone"] and len(store.failures()) == 0


def test_an_index_line_without_a_video_never_stops_a_reader(damaged):
    with open(damaged / "index.jsonl", "a") as f:
        f.write('{}\n{"split": "train"}\n[1]\n')
    store = FeatureStore(damaged)
    assert store.video_ids() == ["silent"] and store.info()["videos"] == 1
    for args in (["info", damaged], ["verify", damaged]):
        res = cli(*args)
        assert res.exit_code == 0 and "Traceback" not in res.output, (args, res.output)
    assert "1 complete" in cli("info", damaged).output


def test_an_index_line_lacking_what_listings_read_is_read_from_the_group(damaged):
    """A well-formed line that supersedes a video's real entry but lacks its split, label, ... (hand-edited or
    damaged): listings read that video from its group (fs info failed with KeyError: 'split'), and a writer
    re-indexes it."""
    want = FeatureStore(damaged).video_attrs("silent")
    with open(damaged / "index.jsonl", "a") as f:
        f.write('{"video_id": "silent", "tag": "x"}\n')
    store = FeatureStore(damaged)
    assert store.video_attrs("silent")["split"] == want["split"] and store.info()["videos"] == 1
    res = cli("info", damaged)
    assert res.exit_code == 0 and "1 complete" in res.output, res.output
    FeatureStore(damaged, mode="a").video_ids()              # a writer's listing indexes the group's entry again
    last = (damaged / "index.jsonl").read_text().splitlines()[-1]
    assert '"split"' in last and '"silent"' in last


def test_a_failure_row_of_a_video_stored_since_is_forgotten(damaged, video_dir, client):
    """A run stopped after storing a video that had a row leaves the row; the next run drops it."""
    FeatureStore(damaged, mode="a").record_failure("silent", str(video_dir / "silent.mp4"), "decode", "old")
    summary, store = extract(damaged, rows(silent=video_dir / "silent.mp4"), client)
    assert summary.skipped_done == 1 and len(store.failures()) == 0


# --- item 6: a decoder stopped by a signal is not a fault of its video; Ctrl-C is one line and status 130 -------

def stopping_ffmpeg(tmp_path, how: str) -> str:
    """An ffmpeg that, asked to decode to the frame pipe, is stopped as ``how`` says; the real one otherwise."""
    act = {"sigint": "kill -INT $$; sleep 5",
           "exit255": "exit 255",                                      # real ffmpeg after SIGINT at -loglevel error
           "said": "echo 'Exiting normally, received signal 2.' >&2; exit 255",
           "segv": "kill -SEGV $$; sleep 5"}[how]
    script = tmp_path / "bin" / "ffmpeg"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"""#!/bin/bash
case " $* " in
  *" pipe:1 "*) {act};;
esac
exec '{ffmpeg_exe()}' "$@"
""")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("how", ["sigint", "exit255", "said"])
def test_a_decoder_stopped_by_a_signal_stops_the_run_and_the_video_is_done_by_the_next(tmp_path, video_dir, client,
                                                                                      monkeypatch, how):
    monkeypatch.setenv("FS_FFMPEG", stopping_ffmpeg(tmp_path, how))
    df = rows(tone=video_dir / "tone.mp4")
    with pytest.raises(ExtractionInterrupted, match="interrupted .*decoding tone.mp4 was stopped by .*signal"):
        extract(tmp_path / "s.zarr", df, client)
    store = FeatureStore(tmp_path / "s.zarr")
    assert len(store.failures()) == 0 and store.video_ids() == []
    monkeypatch.delenv("FS_FFMPEG")
    summary, store = extract(tmp_path / "s.zarr", df, client)
    assert (summary.stored, summary.failed, summary.skipped_failed) == (1, 0, 0) and len(store.failures()) == 0


def test_a_decoder_that_crashes_on_its_own_is_still_the_videos_fault(tmp_path, video_dir, client, monkeypatch):
    monkeypatch.setenv("FS_FFMPEG", stopping_ffmpeg(tmp_path, "segv"))
    summary, store = extract(tmp_path / "s.zarr", rows(tone=video_dir / "tone.mp4"), client)
    assert summary.failed == 1
    assert store.failures().set_index("video_id").loc["tone", "stage"] == "decode"


def test_which_decoder_exits_are_stops_from_outside():
    assert stop_signal(-signal.SIGINT) == "signal 2 (SIGINT)"
    assert stop_signal(-signal.SIGKILL) == "signal 9 (SIGKILL)"
    assert stop_signal(255, b"Exiting normally, received signal 15.\n") == "signal 15 (SIGTERM)"
    assert stop_signal(255, b"").startswith("a signal (exit status 255")
    for rc, err in ((0, b""), (1, b"moov atom not found"), (-signal.SIGSEGV, b""), (-signal.SIGABRT, b""),
                    (255, b"x.mp4: Operation not permitted")):
        assert stop_signal(rc, err) == "", rc


def test_ctrl_c_in_the_client_is_one_line_and_exit_status_130(tmp_path, video_dir, manifest_of, threaded_cli,
                                                              monkeypatch):
    real = extract_mod.as_completed_bounded

    def interrupted_after_one(*args, **kwargs):
        for i, pair in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt
            yield pair

    monkeypatch.setattr(extract_mod, "as_completed_bounded", interrupted_after_one)
    m = manifest_of({"tone": (video_dir / "tone.mp4", "a", "train"),
                     "silent": (video_dir / "silent.mp4", "a", "train")})
    res = cli("extract", "--manifest", m, "--store", tmp_path / "s.zarr", "--descriptors", "image,audio,fused",
              "--weights", "random")
    assert res.exit_code == 130, res.output
    assert "Traceback" not in res.output and "Aborted" not in res.output
    said = [line for line in res.output.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0].startswith("interrupted: this run stored 1 video(s); 1 in flight"), res.output
    assert len(FeatureStore(tmp_path / "s.zarr").failures()) == 0
