"""Decode a video once with ffmpeg: 30 fps RGB frames scaled and centre-cropped inside ffmpeg, and 16 kHz mono audio.

A single ffmpeg process writes the frames to stdout and the audio to a second pipe (fd 3), so each stream of the
file is decoded exactly once. Frames are streamed; only the (small) audio is held whole.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import ffmpeg
import numpy as np

from featurestore.constants import CROP, FPS, SAMPLE_RATE, SHORT_SIDE

T = TypeVar("T")
# hwaccel -> the host formats its frames may download to (8- and 10/16-bit 4:2:0, 4:4:4): what NVDEC outputs
HW_DOWNLOAD_FORMATS = {"cuda": "nv12|p010le|p016le|yuv444p|yuv444p16le"}
# the last ffmpeg line when frames decoded in software (a stream NVDEC lacks) reach hwdownload: that file's fault
STREAM_FALLBACK_MARKERS = ("Impossible to convert", "Error while processing the decoded data",
                           "Error reinitializing filters")


class DecodeError(RuntimeError):
    """A video (or its audio) could not be decoded; the message says why in one line."""


class DecodeTimeout(DecodeError):
    """ffmpeg (or ffprobe) ran past the video's time limit and was killed; the message says which file, how long
    and which process."""


class DecoderStopped(DecodeError):
    """ffmpeg (or ffprobe) was stopped by a signal from outside (Ctrl-C sent to the process group, a kill, the
    out-of-memory killer): not the video's fault, so it never becomes a failures row; the run stops and the video
    is decoded again by the next one. ``signal_name`` names the signal."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


# signals by which a decoder crashes on its own (a malformed file may do that): those stay the video's fault
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT,
                           signal.SIGSYS, signal.SIGTRAP})
SIGNAL_EXIT_STATUS = 255     # ffmpeg's exit status after SIGINT or SIGTERM ("Exiting normally, received signal N")


def stop_signal(returncode: int | None, stderr: bytes | str = b"") -> str:
    """The name of the signal that stopped an ffmpeg or ffprobe run from outside, "" when it was not stopped so.

    A process killed by a signal has a negative ``returncode``; ffmpeg catches SIGINT and SIGTERM and exits 255,
    saying "received signal N" only at a log level above ``error`` (so the decodes here see an empty stderr).
    A crash signal (:data:`CRASH_SIGNALS`) and an exit 255 with another message are the file's doing: ""."""
    if returncode is None or returncode == 0:
        return ""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    if returncode < 0:
        return "" if -returncode in CRASH_SIGNALS else _signal_name(-returncode)
    if returncode == SIGNAL_EXIT_STATUS:
        said = re.search(r"received signal (\d+)", text, re.IGNORECASE)
        if said:
            return _signal_name(int(said[1]))
        if not text.strip():
            return "a signal (exit status 255, which ffmpeg uses after SIGINT or SIGTERM)"
    return ""


def _signal_name(number: int) -> str:
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


def _raise_if_stopped(returncode: int | None, stderr: bytes, what: str) -> None:
    stopped = stop_signal(returncode, stderr)
    if stopped:
        raise DecoderStopped(f"{what} was stopped by {stopped}", stopped)


def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$FS_FFMPEG``, else ``ffmpeg`` on PATH, else the one bundled by imageio-ffmpeg."""
    exe = os.environ.get("FS_FFMPEG") or shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError as e:
        raise DecodeError("no ffmpeg found: install it (apt-get install ffmpeg), pip install imageio-ffmpeg, "
                          "or set FS_FFMPEG") from e


def ffprobe_exe() -> str | None:
    """The ffprobe binary beside ffmpeg, ``$FS_FFPROBE`` or on PATH; None when only ffmpeg exists."""
    exe = os.environ.get("FS_FFPROBE")
    if exe:
        return exe
    sibling = os.path.join(os.path.dirname(ffmpeg_exe()), "ffprobe")
    return sibling if os.path.exists(sibling) else shutil.which("ffprobe")


@dataclass
class ProbeInfo:
    """Container facts read from headers (no decoding)."""

    has_video: bool
    has_audio: bool
    duration: float | None
    width: int | None
    height: int | None


def safe_path(path: str) -> str:
    """``path`` as ffmpeg and ffprobe must receive it: absolute, so that a name such as ``-report`` is never read as
    an option nor one such as ``concat:a|b`` or ``http://x`` as a protocol (joined to the working directory, not
    normalised, so ``..`` after a symbolic link keeps its meaning)."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_problem(path: str) -> str:
    """Why ``path`` cannot be a video file ("file not found: ...", "not a regular file (a FIFO): ..."), "" when it
    is a regular file (or a link to one). Reads only its status: a FIFO is never opened, so this cannot block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    if stat.S_ISREG(mode):
        return ""
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    return f"not a regular file ({kind}): {path}"


def _run_probe(cmd: list[str], path: str, timeout: float) -> subprocess.CompletedProcess:
    """Run a probe command; past ``timeout`` seconds (0: no limit) it is killed and DecodeTimeout raised."""
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout or None)
    except subprocess.TimeoutExpired:     # subprocess.run has killed and reaped it
        raise DecodeTimeout(f"timeout: probing {os.path.basename(path)} gave no answer in {timeout:g} s "
                            f"(--video-timeout): killed {os.path.basename(cmd[0])}") from None


def _probe_with_ffmpeg(path: str, timeout: float = 0) -> ProbeInfo:
    """Header facts from ``ffmpeg -i`` when no ffprobe is installed (imageio-ffmpeg ships ffmpeg only)."""
    proc = _run_probe([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", safe_path(path)], path, timeout)
    _raise_if_stopped(proc.returncode, proc.stderr, f"ffmpeg probing {os.path.basename(path)}")
    text = proc.stderr.decode(errors="replace")
    if "Invalid data found" in text or "No such file" in text or "moov atom not found" in text:
        raise DecodeError(text.strip().splitlines()[-1])
    dur = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    size = re.search(r"Stream #\S+.*Video:.*?(\d{2,5})x(\d{2,5})", text)
    return ProbeInfo(
        has_video=" Video: " in text, has_audio=" Audio: " in text,
        duration=int(dur[1]) * 3600 + int(dur[2]) * 60 + float(dur[3]) if dur else None,
        width=int(size[1]) if size else None, height=int(size[2]) if size else None)


def probe(path: str, timeout: float = 0) -> ProbeInfo:
    """Read stream and duration facts from the container headers.

    A probe still running after ``timeout`` seconds (0: no limit) is killed and raises :class:`DecodeTimeout`.
    """
    problem = file_problem(path)
    if problem:
        raise DecodeError(problem)
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    exe = ffprobe_exe()
    if exe is None:
        return _probe_with_ffmpeg(path, timeout)
    proc = _run_probe([exe, "-show_format", "-show_streams", "-of", "json", "-i", safe_path(path)], path, timeout)
    _raise_if_stopped(proc.returncode, proc.stderr, f"ffprobe probing {os.path.basename(path)}")
    if proc.returncode != 0:              # what ffmpeg.probe(path, cmd=exe) runs, with a time limit
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DecodeError(f"ffprobe: {lines[-1] if lines else 'unreadable file'}")
    meta = json.loads(proc.stdout.decode("utf-8"))
    streams = meta.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    dur = meta.get("format", {}).get("duration")
    return ProbeInfo(
        has_video=video is not None,
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
        duration=float(dur) if dur not in (None, "N/A") else None,
        width=int(video["width"]) if video and "width" in video else None,
        height=int(video["height"]) if video and "height" in video else None,
    )


def frame_filters(video, fps: int = FPS, short_side: int = SHORT_SIDE, crop: int = CROP, select: str = ""):
    """Extraction's frame geometry on an ffmpeg-python video stream: resample to ``fps``, (keep the frames
    ``select`` names,) scale the short side to ``short_side`` keeping the aspect ratio (even sizes for the scaler),
    then a centre crop of ``crop`` x ``crop``."""
    video = video.filter("fps", fps=fps)
    if select:
        video = video.filter("select", select)
    return (video.filter("scale", f"if(lt(iw,ih),{short_side},-2)", f"if(lt(iw,ih),-2,{short_side})")
            .filter("crop", crop, crop))


def decode_command(path: str, audio_fd: int | None, fps: int = FPS, crop: int = CROP,
                   short_side: int = SHORT_SIDE, sample_rate: int = SAMPLE_RATE, hwaccel: str = "",
                   threads: int = 0) -> list[str]:
    """The one ffmpeg command that decodes ``path``: rgb24 frames on stdout, f32le mono audio on ``audio_fd``.

    ``hwaccel`` ("cuda") decodes on the GPU's video engine into GPU frames, which ``hwdownload`` brings back to
    host memory (nv12) for the same fps, scale and crop filters. ffmpeg silently decodes a stream the engine lacks
    (codec, profile, bit depth) in software; those frames cannot pass ``hwdownload``, so such a decode fails instead
    of passing for a hardware one, and :func:`decode_with_fallback` decodes it in software, saying so.
    ``threads`` sets the decoder threads (0: ffmpeg's).
    """
    if hwaccel and hwaccel not in HW_DOWNLOAD_FORMATS:
        raise DecodeError(f"--hwaccel {hwaccel}: fs decodes on hardware with {', '.join(HW_DOWNLOAD_FORMATS)} only")
    opts = {**({"hwaccel": hwaccel, "hwaccel_output_format": hwaccel} if hwaccel else {}),
            **({"threads": threads} if threads else {})}
    inp = ffmpeg.input(safe_path(path), **opts)
    video = inp.video
    if hwaccel:
        video = video.filter("hwdownload").filter("format", HW_DOWNLOAD_FORMATS[hwaccel])
    outputs = [frame_filters(video, fps, short_side, crop).output("pipe:1", format="rawvideo", pix_fmt="rgb24")]
    if audio_fd is not None:
        outputs.append(inp.audio.output(f"pipe:{audio_fd}", format="f32le", acodec="pcm_f32le", ac=1,
                                        ar=sample_rate))
    return (ffmpeg.merge_outputs(*outputs)
            .global_args("-hide_banner", "-nostdin", "-loglevel", "error")
            .compile(cmd=ffmpeg_exe()))


def frames_at(path: str, times: list[float], timeout: float = 30.0, fps: int = FPS, crop: int = CROP,
              short_side: int = SHORT_SIDE) -> np.ndarray:
    """The frames extraction took at ``times`` (seconds on its ``fps`` grid), scaled and cropped as it does:
    (k, crop, crop, 3) uint8, equal to the decoded step inputs.

    For display only (``fs show``): each frame is one short ffmpeg run, so a long video is not decoded whole. It
    seeks to a grid point up to a second early and runs extraction's own ``fps`` filter from there, so the frame it
    keeps is the one that filter picks at ``t`` (a plain seek to ``t`` returns the frame at or after it, which is
    not always the one nearest). Raises :class:`DecodeError` when the file is gone or a frame cannot be read.
    """
    if not os.path.exists(path):
        raise DecodeError(f"file not found: {path}")
    out = np.zeros((len(times), crop, crop, 3), np.uint8)
    for i, t in enumerate(times):
        slot = int(round(float(t) * fps))
        lead = min(max(slot, 0), fps)                  # grid frames decoded before t
        video = frame_filters(ffmpeg.input(safe_path(path), ss=f"{(slot - lead) / fps:.6f}").video, fps, short_side, crop,
                              select=f"gte(t,{(lead - 0.5) / fps:.6f})")
        cmd = (video.output("pipe:1", vframes=1, format="rawvideo", pix_fmt="rgb24")
               .global_args("-hide_banner", "-nostdin", "-loglevel", "error")
               .compile(cmd=ffmpeg_exe()))
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DecodeTimeout(f"timeout: reading the frame at {t:.2f} s of {os.path.basename(path)} took over "
                                f"{timeout:g} s") from None
        if proc.returncode != 0 or len(proc.stdout) < out[i].nbytes:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DecodeError(f"no frame at {t:.2f} s of {os.path.basename(path)}" + (f": {err[-1]}" if err else ""))
        out[i] = np.frombuffer(proc.stdout[:out[i].nbytes], np.uint8).reshape(crop, crop, 3)
    return out


def _popen(cmd: list[str], pass_fds: tuple[int, ...]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds)


class DecodedVideo:
    """One running decode of a video. Iterate :meth:`frames` first, then read :meth:`audio`.

    Use as a context manager so the ffmpeg process is always reaped.

    ``timeout`` (seconds, 0: none) limits ffmpeg's own time on the video: the time spent waiting for its frames and
    for it to exit, summed over the decode. Time ffmpeg spends blocked because the reader is busy elsewhere (the
    models behind) does not count. A watchdog thread kills ffmpeg once the limit is used up, and the read ends in
    :class:`DecodeTimeout`.
    """

    def __init__(self, path: str, with_audio: bool, fps: int = FPS, crop: int = CROP,
                 short_side: int = SHORT_SIDE, sample_rate: int = SAMPLE_RATE, hwaccel: str = "", threads: int = 0,
                 timeout: float = 0):
        self.path, self.with_audio, self.fps, self.crop, self.sample_rate = path, with_audio, fps, crop, sample_rate
        self.timeout = timeout
        self.n_frames = 0
        self._audio = bytearray()
        self._stderr = b""
        self._waited = 0.0                 # seconds spent waiting on ffmpeg, finished waits
        self._wait_start: float | None = None   # monotonic start of the wait in progress
        self._wait_lock = threading.Lock()
        self._done = threading.Event()
        self._timed_out = ""               # the DecodeTimeout message once the watchdog killed ffmpeg
        read_fd = write_fd = None
        if with_audio:
            read_fd, write_fd = os.pipe()
        cmd = decode_command(path, write_fd, fps, crop, short_side, sample_rate, hwaccel, threads)
        try:
            self._proc = _popen(cmd, pass_fds=(write_fd,) if with_audio else ())
        finally:
            if write_fd is not None:
                os.close(write_fd)  # the child holds its copy; EOF reaches us when ffmpeg exits
        self._threads = [threading.Thread(target=self._drain_stderr, daemon=True)]
        if read_fd is not None:
            self._threads.append(threading.Thread(target=self._drain_audio, args=(read_fd,), daemon=True))
        for t in self._threads:
            t.start()
        if timeout > 0:
            threading.Thread(target=self._watchdog, daemon=True, name=f"ffmpeg-watchdog-{self._proc.pid}").start()

    def _waiting(self, on: bool) -> None:
        """Mark the start (``on``) or end of a wait for ffmpeg (its next frames, or its exit)."""
        with self._wait_lock:
            now = time.monotonic()
            if on:
                self._wait_start = now
            elif self._wait_start is not None:
                self._waited += now - self._wait_start
                self._wait_start = None

    def used_seconds(self) -> float:
        """ffmpeg's own time on this video so far: the seconds spent waiting for it."""
        with self._wait_lock:
            return self._waited + (time.monotonic() - self._wait_start if self._wait_start is not None else 0.0)

    def _watchdog(self) -> None:
        poll = min(0.5, max(0.01, self.timeout / 20))
        while not self._done.wait(poll):
            used = self.used_seconds()
            if used >= self.timeout and self._proc.poll() is None:
                self._timed_out = (
                    f"timeout: ffmpeg (pid {self._proc.pid}) decoding {os.path.basename(self.path)} used {used:.1f} s, "
                    f"the limit of {self.timeout:g} s (--video-timeout), after {self.n_frames} frames: killed it")
                self._proc.kill()
                return

    def _drain_stderr(self) -> None:
        self._stderr = self._proc.stderr.read()

    def _drain_audio(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(1 << 16):
                self._audio += chunk

    def frames(self, chunk: int = 64) -> Iterator[np.ndarray]:
        """Yield frames in chunks of shape (k, crop, crop, 3) uint8, in order."""
        frame_bytes = self.crop * self.crop * 3
        out = self._proc.stdout
        while True:
            self._waiting(True)
            try:
                buf = out.read(frame_bytes * chunk)
            finally:
                self._waiting(False)
            if not buf:
                break
            k = len(buf) // frame_bytes
            if k == 0:
                break
            self.n_frames += k
            yield np.frombuffer(buf[: k * frame_bytes], np.uint8).reshape(k, self.crop, self.crop, 3)
        self._finish()

    def _finish(self) -> None:
        self._waiting(True)
        try:
            rc = self._proc.wait()
            for t in self._threads:
                t.join()
        finally:
            self._waiting(False)
            self._done.set()
        if self._timed_out:
            raise DecodeTimeout(self._timed_out)
        _raise_if_stopped(rc, self._stderr, f"ffmpeg (pid {self._proc.pid}) decoding {os.path.basename(self.path)}")
        if rc != 0:
            lines = self._stderr.decode(errors="replace").strip().splitlines()
            raise DecodeError(f"ffmpeg exited {rc}: {lines[-1] if lines else 'no message'}")
        if self.n_frames == 0:
            raise DecodeError("no video frames could be decoded")

    def audio(self) -> np.ndarray:
        """The whole audio track as float32 mono at ``sample_rate`` (empty when the file has none)."""
        if self._proc.poll() is None:
            raise RuntimeError("read every frame before the audio")
        n = len(self._audio) // 4
        return np.frombuffer(bytes(self._audio[: n * 4]), "<f4").copy()

    def close(self) -> None:
        """Stop the watchdog, kill ffmpeg if it still runs, and reap it."""
        self._done.set()
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "DecodedVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@functools.lru_cache(maxsize=None)
def hwaccels() -> tuple[str, ...]:
    """The hardware decoding methods this ffmpeg build offers (``ffmpeg -hwaccels``); the device may still lack them."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-hwaccels"], capture_output=True, text=True).stdout
    return tuple(line.strip() for line in out.splitlines()[1:] if line.strip())


_HWACCEL_FAILED: dict[str, str] = {}      # hwaccel -> why it failed in this process


def hwaccel_failure(hwaccel: str) -> str:
    """Why ``hwaccel`` was given up in this process ("" while it has not failed)."""
    return _HWACCEL_FAILED.get(hwaccel, "")


def decode_with_fallback(decode: Callable[[str], T], hwaccel: str,
                         can_retry: Callable[[], bool] = lambda: True) -> tuple[T, str]:
    """``decode(hwaccel)``, falling back to ``decode("")`` when hardware decoding fails; returns (result, decoder).

    When the software decode of the same file succeeds, the hwaccel is what failed. A stream the engine lacks
    (:data:`STREAM_FALLBACK_MARKERS`: ffmpeg decoded it in software and hwdownload refused the frames) falls back
    for this file only; any other failure (no driver, no device) gives the hwaccel up for the rest of this process
    (:func:`hwaccel_failure` says why), so later files do not pay a failing ffmpeg start each.
    ``can_retry`` says whether the failed attempt left nothing behind that a second decode would duplicate. A
    :class:`DecodeTimeout` is not retried: the time limit is the video's, not one attempt's; nor is
    :class:`DecoderStopped` (a decoder stopped by a signal: the run is being stopped).
    """
    if not hwaccel or hwaccel in _HWACCEL_FAILED:
        return decode(""), "software"
    try:
        return decode(hwaccel), hwaccel
    except (DecodeTimeout, DecoderStopped):
        raise
    except DecodeError as e:
        if not can_retry():
            raise
        result = decode("")
        if not any(m in str(e) for m in STREAM_FALLBACK_MARKERS):
            _HWACCEL_FAILED[hwaccel] = f"--hwaccel {hwaccel} failed ({e}); decoding in software from now on"
        return result, "software"


def ffmpeg_version() -> str:
    """First line of ``ffmpeg -version`` (recorded in provenance)."""
    out = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"
