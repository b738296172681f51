import numpy as np
import pytest

from featurestore import SCHEMA_VERSION
from featurestore.store import FeatureStore, StoreError


def arrays(n=5, c=7):
    rng = np.random.default_rng(0)
    return {"t": np.arange(n, dtype=np.float32) * 16 / 30,
            "image": rng.standard_normal((n, 256)).astype(np.float16),
            "r2p1d_logits": rng.standard_normal((n, c)).astype(np.float16)}


def test_round_trip_keeps_shapes_dtypes_and_attrs(tmp_path):
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    a = arrays()
    assert s.write_video("v1", a, {"label": "run", "split": "train", "n_steps": 5, "duration": 2.5,
                                   "has_audio": True})
    v = FeatureStore(tmp_path / "s.zarr").read_video("v1")
    for k in a:
        assert v[k].dtype == a[k].dtype and np.array_equal(v[k], a[k])
    assert v.label == "run" and v.attrs["complete"] is True


def test_unfinished_video_is_invisible_and_cleared(tmp_path):
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    g = s.root["partial"].create_group("v2-dead", attributes={"complete": False})
    g.create_array("t", data=np.zeros(3, np.float32))
    assert s.video_ids() == [] and s.partial_ids() == ["v2-dead"]
    with pytest.raises(StoreError):
        s.read_video("v2")
    assert s.clear_partials() == 1 and s.partial_ids() == []


def test_second_writer_of_a_video_publishes_nothing(tmp_path):
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    attrs = {"label": "run", "split": "train", "n_steps": 5, "duration": 2.5, "has_audio": True}
    assert s.write_video("v1", arrays(), attrs)
    assert not s.write_video("v1", arrays(), attrs)
    assert s.video_ids() == ["v1"] and s.partial_ids() == []


def test_rows_must_agree(tmp_path):
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    with pytest.raises(ValueError, match="rows"):
        s.write_video("v1", {"t": np.zeros(3, np.float32), "image": np.zeros((4, 256), np.float16)}, {})


def test_initialise_records_then_refuses_other_settings(tmp_path):
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    prov = {"models": {"student": {"source": "random(seed=0)", "sha256": "aaa"}}}
    s.initialise("synthetic", ["a", "b"], ["image"], prov)
    assert s.attrs["schema_version"] == SCHEMA_VERSION
    s.initialise("synthetic", ["a", "b"], ["image"], prov)          # same settings: fine
    with pytest.raises(StoreError, match="classes"):
        s.initialise("synthetic", ["a", "c"], ["image"], prov)
    with pytest.raises(StoreError, match="sha256 aaa"):
        s.initialise("synthetic", ["a", "b"], ["image"], {"models": {"student": {"source": "x", "sha256": "bbb"}}})


def test_other_schema_version_is_refused(tmp_path):
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    s.root.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="schema version"):
        FeatureStore(tmp_path / "s.zarr")


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore(tmp_path / "nope.zarr")


def test_failures_keep_the_latest_reason_and_are_forgotten_once_stored(tmp_path):
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    s.record_failure("a", "/x/a.mp4", "decode", "bad,\nthing")
    s.record_failure("a", "/x/a.mp4", "probe", "worse")
    s.record_failure("b", "/x/b.mp4", "probe", "gone")
    df = s.failures()
    assert df["video_id"].tolist() == ["a", "b"] and df["stage"].tolist() == ["probe", "probe"]
    s.forget_failures(["a"])
    assert s.failures()["video_id"].tolist() == ["b"]
