"""fs's one progress-bar style, for every long loop (extraction, verify, pack, the trainers' epochs, the bench...).

A bar is a tqdm on stderr that fits the terminal, clears itself when done and redraws at most every
``MIN_INTERVAL`` seconds. It is drawn only on a terminal (a log file or a pipe gets no carriage-return frames, as
tqdm's own ``disable=None``) and only when the ``featurestore`` logger (or the one passed) is enabled for INFO:
``fs -q`` hides bars with the info lines, and a library user sees them once logging is set to INFO
(``logging.basicConfig(level=logging.INFO)``)."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from tqdm import tqdm

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.5          # seconds between redraws: a bar costs nothing next to a video or an epoch


def progress_enabled(logger: logging.Logger | None = None) -> bool:
    """Whether bars are drawn: ``logger`` (default this package's) passes INFO records and stderr is a terminal,
    or ``$FS_PROGRESS`` says: ``1`` draws them anyway (a notebook, whose stderr is no terminal), ``0`` never."""
    forced = os.environ.get("FS_PROGRESS", "")
    if forced in ("0", "1"):
        return forced == "1"
    isatty = getattr(sys.stderr, "isatty", None)
    return (logger or log).isEnabledFor(logging.INFO) and bool(isatty and isatty())


def progress_bar(total: int | None = None, desc: str = "", unit: str = "video", disable: bool = False,
                 logger: logging.Logger | None = None, **options) -> tqdm:
    """A tqdm in fs's one style (stderr, dynamic width, not left behind, redrawn at most every ``MIN_INTERVAL``
    seconds), disabled when ``disable``, when ``logger`` is above INFO (``fs -q``) or when stderr is no terminal.
    ``options`` go to tqdm."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=MIN_INTERVAL, disable=disable or not progress_enabled(logger), **options)


def tracker(bar: tqdm) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback (the form fs's library loops report in) that moves ``bar``."""
    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
    return progress
