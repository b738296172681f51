"""The real-video tests skip locally when ../shared/data/real is absent, but fail on CI, which has it."""
import pytest

from tests.conftest import REAL_DATA, need_real_data


def test_missing_real_videos_fail_on_ci_and_skip_elsewhere(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "v.mp4"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        need_real_data(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        need_real_data(missing)
    need_real_data(tmp_path)                          # present: neither


def test_this_checkout_has_the_real_videos_when_on_ci():
    need_real_data(REAL_DATA)
