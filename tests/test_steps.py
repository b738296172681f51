import numpy as np
import pytest

from featurestore.constants import CLIP_FRAMES, STEP_FRAMES
from featurestore.steps import iter_steps, n_steps_for


def numbered_frames(n: int) -> np.ndarray:
    """Frames whose every pixel holds the frame's index (mod 256), so indices can be read back."""
    return (np.arange(n) % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, 112, 112, 3), np.uint8)


@pytest.mark.parametrize("n_frames", [1, 15, 16, 17, 31, 32, 33, 100, 420])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_steps_start_every_16_frames_and_pad_past_the_end(n_frames, chunk):
    frames = numbered_frames(n_frames)
    chunks = (frames[i:i + chunk] for i in range(0, n_frames, chunk))
    steps = list(iter_steps(chunks))
    assert len(steps) == n_steps_for(n_frames) == -(-n_frames // 16)
    for k, (idx, first, clip) in enumerate(steps):
        assert idx == k
        assert first[0, 0, 0] == (STEP_FRAMES * k) % 256
        assert clip.shape == (CLIP_FRAMES, 112, 112, 3)
        want = np.minimum(STEP_FRAMES * k + 2 * np.arange(CLIP_FRAMES), n_frames - 1)
        assert clip[:, 0, 0, 0].tolist() == (want % 256).tolist()


def test_real_video_frame_count_gives_27_steps():
    assert n_steps_for(420) == 27
