"""The real-video tests skip locally when ../shared/data/real is absent, but fail on CI, which has it."""
import pytest

from tests.conftest import REAL_DATA, need_real_data


def outcome(*paths):
    """What need_real_data raises (a skip is an exception too, so catch everything and return its type)."""
    try:
        need_real_data(*paths)
    except BaseException as e:          # noqa: B036 - pytest's skip and fail are BaseExceptions
        return type(e)
    return None


def test_missing_real_videos_fail_on_ci_and_skip_elsewhere(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "v.mp4"
    monkeypatch.setenv("CI", "true")
    assert outcome(missing) is pytest.fail.Exception
    monkeypatch.delenv("CI")
    assert outcome(missing) is pytest.skip.Exception
    assert outcome(tmp_path) is None                   # present: neither


def test_this_checkout_has_the_real_videos_when_on_ci():
    need_real_data(REAL_DATA)
