"""Behaviour pinned: every bench method's chosen steps, scores and GFLOPs on a fixed fabricated store equal the
committed fixture (within float tolerance), so moving code around cannot change what ``fs bench`` reports, whether
the videos are answered one by one or in padded blocks."""
import json

import numpy as np
import pytest

from tests.bench_rows import FIXTURE, compute_rows


@pytest.fixture(scope="module", params=["per-video", "blocks"])
def rows(request, tmp_path_factory):
    """The rows answered video by video (``fs show``, a user's selector) and in blocks (``fs bench``)."""
    return compute_rows(tmp_path_factory.mktemp("rows"), blocks=request.param == "blocks")


def test_every_recorded_method_row_is_recomputed_in_table_order(rows):
    expected = json.loads(FIXTURE.read_text())
    assert len(expected["__order__"]) > 40   # the blind baselines, skimmer variants, SCSampler rows and AVGN grid
    assert rows["__order__"] == expected["__order__"]


@pytest.mark.parametrize("method", json.loads(FIXTURE.read_text())["__order__"])
def test_method_rows_match_the_fixture(rows, method):
    expected = json.loads(FIXTURE.read_text())[method]
    got = rows[method]
    assert sorted(got) == sorted(expected)
    for vid, want in expected.items():
        assert got[vid]["steps"] == want["steps"], vid
        np.testing.assert_allclose(got[vid]["scores"], want["scores"], rtol=1e-4, atol=1e-5, err_msg=vid)
        assert got[vid]["gflops"] == pytest.approx(want["gflops"], rel=1e-6), vid
