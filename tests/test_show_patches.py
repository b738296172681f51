"""``fs show`` draws the patch a spatial glance cropped (``Selection.details["patches"]``) on the chosen frames."""
from __future__ import annotations

import numpy as np
import pytest

from featurestore.store import FeatureStore
from models.selection import Selection
from pipelines.show import PATCH_COLOUR, patch_boxes, render_video

GREY = 128
SIZE = 64 / 112                 # the default patch: 64 px on the 112 px frame


def test_patch_boxes_put_the_centre_and_side_in_pixel_edges_by_hand():
    patches = {"steps": np.array([2, 0]), "centres": np.array([[0.5, 0.5], [0.25, 0.75]]), "size": SIZE}
    boxes = patch_boxes(patches, 112, 112)
    assert boxes[2] == pytest.approx((24, 24, 88, 88))          # 56 -+ 32 on both axes
    assert boxes[0] == pytest.approx((-4, 52, 60, 116))         # x 28 -+ 32, y 84 -+ 32: past the frame, unclipped
    wide = patch_boxes({"steps": [1], "centres": [[0.5, 0.5]], "size": 0.5}, 200, 100)
    assert wide == {1: pytest.approx((50, 25, 150, 75))}        # a side of the frame's side, each axis its own
    assert patch_boxes({"steps": np.zeros(0, int), "centres": np.zeros((0, 2)), "size": SIZE}, 112, 112) == {}


class FakeSpatialGlance:
    """A selector choosing steps 1 and 2 that reports a known patch for step 1 only."""

    name = "FAKE-GLANCE"
    patches = {"steps": np.array([1]), "centres": np.array([[0.25, 0.5]]), "size": SIZE}

    def select(self, video) -> Selection:
        return Selection(np.array([1, 2]), np.array([0.7, 0.3]), 0.0, {"patches": self.patches})


@pytest.fixture
def grey_store(tmp_path) -> FeatureStore:
    """One 3-step video whose kept frames are uniform grey, so the figure's grey pixels are the tiles'."""
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    store.initialise("d", ["a", "b"], ["image"], {}, inputs=["frames"])
    n = 3
    store.write_video("v", {"t": (np.arange(n) * 16 / 30).astype(np.float32),
                            "image": np.zeros((n, 256), np.float16),
                            "frames": np.full((n, 112, 112, 3), GREY, np.uint8)},
                      {"label": "a", "split": "test", "n_steps": n, "duration": n * 16 / 30, "has_audio": False})
    return FeatureStore(store.path)


def test_the_patch_box_is_drawn_where_the_patch_lies_on_its_frame(grey_store, tmp_path):
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    video = grey_store.read_video("v")
    glance = FakeSpatialGlance()
    shown = render_video(grey_store, video, [(glance.name, glance.select(video))], tmp_path / "v.png")
    assert shown.tiles == 2 and shown.frames == "store"
    assert shown.patches == {glance.name: [(1, pytest.approx((-4, 24, 60, 88)))]}     # step 1 only: x 28 -+ 32
    png = imread(shown.path)[..., :3]
    grey = np.all(np.abs(png - GREY / 255) < 1 / 255, axis=-1)
    yellow = np.all(np.abs(png - np.array(to_rgb(PATCH_COLOUR))) < 0.1, axis=-1)
    assert yellow.any()
    # the two tiles side by side: runs of columns with many grey pixels (text antialiasing has a few); the first
    # run is step 1's tile, and the box lies on it
    cols = np.nonzero(grey.sum(0) > 20)[0]
    breaks = np.nonzero(np.diff(cols) > 1)[0]
    assert len(breaks) == 1                                # two tiles
    gx0, gx1 = int(cols[0]), int(cols[breaks[0]]) + 1
    rows = np.nonzero(grey[:, gx0:gx1].sum(1) > 20)[0]
    gy0, gy1 = int(rows[0]), int(rows[-1]) + 1
    # the box's lines, by their centres: rows (columns) where the yellow runs across the tile
    lines_y = np.nonzero(yellow.sum(1) > 20)[0]
    lines_x = np.nonzero(yellow.sum(0) > 20)[0]
    top, bottom = lines_y[lines_y < lines_y.mean()].mean() + 0.5, lines_y[lines_y > lines_y.mean()].mean() + 0.5
    right = lines_x.mean() + 0.5                           # one vertical line: the left one, at x = -4, is clipped
    scale = (gx1 - gx0) / 112                              # figure pixels per frame pixel
    tol = 4                                                # frame pixels (3 figure pixels: line snapping, resampling)
    assert right < gx1                                     # on step 1's tile, none on step 2's
    assert abs((right - gx0) / scale - 60) < tol
    assert abs((top - gy0) / scale - 24) < tol and abs((bottom - gy0) / scale - 88) < tol
    assert np.nonzero(yellow.any(0))[0].min() <= gx0 + 1    # the box runs to the tile's left edge


def test_a_selection_without_patches_draws_no_box(grey_store, tmp_path):
    video = grey_store.read_video("v")
    plain = Selection(np.array([1, 2]), np.array([0.7, 0.3]), 0.0, {})
    shown = render_video(grey_store, video, [("PLAIN", plain)], tmp_path / "v.png")
    assert shown.patches == {} and shown.tiles == 2
