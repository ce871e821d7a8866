"""Audio/video I/O for avmech: decode clips into numpy arrays and write them back.

Decoding and encoding go through PyAV (which bundles FFmpeg's libraries; no
``ffmpeg`` binary is needed), soundfile for wav/flac and soxr for resampling.  Audio
is returned as float32 mono, made as one family's released pipeline makes it
(`RECIPES`); video as uint8 RGB frames ``[T, H, W, 3]``.
The synthetic signal helpers at the bottom build the demo data set and tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
import soundfile as sf

from avmech.errors import MediaError

SAMPLE_RATE = 16_000
_SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".aiff", ".aif"}
_AV_AUDIO_CODECS = {".mp3": "libmp3lame", ".m4a": "aac"}
_VIDEO_CODECS = ("libx264", "mpeg4")  # first available encoder wins


@dataclass(frozen=True)
class MediaInfo:
    """Container-level facts about a media file (see :func:`probe`)."""

    duration_s: float
    fps: float | None
    width: int | None
    height: int | None
    n_frames: int | None
    has_video: bool
    has_audio: bool
    audio_sample_rate: int | None


@dataclass(frozen=True)
class VideoClip:
    """Decoded frames ``[T, H, W, 3]`` uint8 RGB with their times in seconds.

    ``fps`` is the rate at which the frames were sampled, ``timestamps`` the
    presentation time of each returned frame relative to the container start.
    """

    frames: np.ndarray
    fps: float
    duration_s: float
    timestamps: np.ndarray


def _open(path: str | Path, kind: str, fix: str) -> av.container.InputContainer:
    if not Path(path).is_file():
        raise MediaError(f"{kind} file '{path}' does not exist: check the path")
    try:
        return av.open(str(path))
    except av.FFmpegError as e:
        raise MediaError(f"could not decode '{path}' as {kind} ({e}); {fix}") from e


def _video_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration is not None else None


def probe(path: str | Path) -> MediaInfo:
    """Read duration, frame geometry/rate and audio rate of ``path`` without decoding."""
    with _open(path, "media", "convert it to mp4/wav") as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        duration = c.duration / av.time_base if c.duration is not None else None
        if duration is None and v is not None:
            duration = _video_duration(c, v)
        if duration is None and a is not None and a.duration is not None:
            duration = float(a.duration * a.time_base)
        return MediaInfo(
            duration_s=float(duration or 0.0),
            fps=float(v.average_rate) if v is not None and v.average_rate else None,
            width=v.width if v is not None else None,
            height=v.height if v is not None else None,
            n_frames=(v.frames or None) if v is not None else None,
            has_video=v is not None,
            has_audio=a is not None,
            audio_sample_rate=a.rate if a is not None else None,
        )


# How each family's released pipeline turns a sound track into 16 kHz mono:
#   "librosa": Qwen2.5-Omni's qwen-omni-utils, librosa.load(path, sr=16000): decoded at the
#       native rate (soundfile for wav/flac, else FFmpeg to 16-bit PCM as audioread does),
#       the mean of the channels, soxr's high-quality resampler, ceil(n * 16000 / rate) samples;
#   "ffmpeg": video-SALMONN 2+'s torchcodec AudioDecoder(num_channels=1, sample_rate=16000):
#       FFmpeg's own downmix, (L + R) / sqrt(2) for stereo, and its own resampler.
AudioRecipe = Literal["librosa", "ffmpeg"]
RECIPES = ("librosa", "ffmpeg")
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _channels(wave: np.ndarray) -> np.ndarray:
    """``[n]`` or ``[n, channels <= 8]`` (soundfile's layout) as float32 ``[n, channels]``."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[:, None]
    if wave.ndim != 2 or not 1 <= wave.shape[1] <= 8:
        raise MediaError(
            f"waveform of shape {wave.shape} is not [n] or [n, channels<=8]; transpose or squeeze it"
        )
    if not np.isfinite(wave).all():
        raise MediaError("the waveform holds NaN or infinite samples: clean or regenerate the audio")
    return wave


def _check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise MediaError(f"audio recipe {recipe!r} is unknown: use one of {RECIPES}")


def _check_rate(rate, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise MediaError(f"{what} {rate!r} is not a positive whole number of samples per second: pass e.g. 16000")
    return int(rate)


def resample(wave: np.ndarray, orig_sr: int, sample_rate: int = SAMPLE_RATE,
             recipe: AudioRecipe = "librosa") -> np.ndarray:
    """A waveform ``[n]`` or ``[n, c <= 8]`` at ``orig_sr`` as float32 mono at ``sample_rate``, by ``recipe``."""
    _check_recipe(recipe)
    orig_sr, sample_rate = _check_rate(orig_sr, "sample_rate"), _check_rate(sample_rate, "target rate")
    wave = _channels(wave)
    if recipe == "librosa":
        mono = wave.mean(axis=1)
        if orig_sr == sample_rate or not len(mono):
            return mono.copy()
        import soxr

        out = soxr.resample(mono, orig_sr, sample_rate, quality="HQ")
        n = math.ceil(len(mono) * sample_rate / orig_sr)
        return np.pad(out, (0, max(0, n - len(out))))[:n].astype(np.float32)
    if not len(wave):
        return np.zeros(0, np.float32)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave.T), format="fltp", layout=_LAYOUTS[wave.shape[1]])
    frame.sample_rate = orig_sr
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
    out = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray()[0] for f in out]).astype(np.float32)


def _decode(path: str | Path, fix: str, resampler: av.AudioResampler) -> tuple[list[np.ndarray], int, int]:
    """The first audio track through ``resampler``: its arrays, and the track's rate and channels."""
    with _open(path, "audio", fix) as c:
        if not c.streams.audio:
            what = "video" if c.streams.video else "file"
            raise MediaError(
                f"{what} '{path}' has no audio track; pass audio=... explicitly or use a clip with sound"
            )
        stream = c.streams.audio[0]
        rate, channels = stream.rate, stream.channels
        chunks = []
        try:
            for frame in c.decode(c.streams.audio[0]):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
        except av.FFmpegError as e:
            raise MediaError(f"could not decode '{path}' as audio ({e}); {fix}") from e
    return chunks, rate, channels


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, recipe: AudioRecipe = "librosa") -> np.ndarray:
    """Decode the (first) audio track of ``path`` as float32 mono at ``sample_rate``, as
    ``recipe``'s released pipeline does (see `RECIPES`)."""
    _check_recipe(recipe)
    fix = "convert it to wav/flac/mp3/mp4"
    if recipe == "ffmpeg":
        chunks, _, _ = _decode(path, fix, av.AudioResampler(format="fltp", layout="mono", rate=int(sample_rate)))
        return np.concatenate([c[0] for c in chunks]).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if Path(path).suffix.lower() in _SOUNDFILE_EXTS and Path(path).is_file():
        try:
            wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
            return resample(wave, rate, sample_rate)
        except sf.LibsndfileError:
            pass  # e.g. a mislabeled container: let FFmpeg try
    # as audioread hands FFmpeg's output to librosa: interleaved 16-bit PCM at the native rate
    chunks, rate, channels = _decode(path, fix, av.AudioResampler(format="s16"))
    if not chunks:
        return np.zeros(0, np.float32)
    wave = np.concatenate([c.reshape(-1) for c in chunks]).astype(np.float32) / 32768.0
    return resample(wave.reshape(-1, channels), rate, sample_rate)


def _nearest(items, targets: np.ndarray) -> list:
    """For each sorted target, the payload of the streamed ``(key, payload)`` item with the nearest key.

    Items must come in increasing key order; iteration stops once every target is served.
    """
    out: list = []
    prev = None
    for key, payload in items:
        # the next target belongs to ``prev`` as soon as the current item is no closer to it
        while prev is not None and len(out) < len(targets):
            if targets[len(out)] - prev[0] > key - targets[len(out)]:
                break
            out.append(prev[1])
        if len(out) == len(targets):
            break
        prev = (key, payload)
    return out + [prev[1]] * (len(targets) - len(out)) if prev is not None else out


def load_wave(source: str | Path | np.ndarray, sample_rate: int | None = None,
              recipe: AudioRecipe = "librosa") -> np.ndarray:
    """Mono float32 at `SAMPLE_RATE` from a file, or from a waveform recorded at ``sample_rate``, by ``recipe``."""
    if isinstance(source, np.ndarray):
        return resample(source, sample_rate, SAMPLE_RATE, recipe)
    return read_audio(source, SAMPLE_RATE, recipe)


def read_video(path: str | Path, fps: float | None = None, n_frames: int | None = None) -> VideoClip:
    """Decode the first video stream of ``path`` into RGB frames.

    Parameters
    ----------
    fps : sample at times ``i / fps`` for ``i < floor(duration * fps)`` (at least one),
        taking for each the decoded frame with the nearest timestamp; ``VideoClip.fps == fps``.
    n_frames : take native frames ``linspace(0, total - 1, n_frames).round()``;
        ``VideoClip.fps`` is then the mean rate ``n_frames / duration``.
    With neither, every frame is returned at the native rate.  Decoding stops once the
    last requested frame is reached.
    """
    if fps is not None and n_frames is not None:
        raise ValueError("pass at most one of fps= and n_frames=")
    if (fps is not None and fps <= 0) or (n_frames is not None and n_frames < 1):
        raise ValueError(f"fps and n_frames must be positive, got fps={fps}, n_frames={n_frames}")
    fix = "convert it to mp4 (h264)"
    with _open(path, "video", fix) as c:
        if not c.streams.video:
            raise MediaError(f"'{path}' has no video stream; pass a video file (e.g. mp4) instead")
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        native = float(stream.average_rate) if stream.average_rate else None
        duration = _video_duration(c, stream)
        if fps is not None and duration is None:
            raise MediaError(f"video '{path}' does not report its duration; {fix} before sampling by fps")
        origin = c.start_time / av.time_base if c.start_time is not None else 0.0
        try:
            decoded = (
                (i, f.time - origin if f.time is not None else i / (native or 1.0), f)
                for i, f in enumerate(c.decode(stream))
            )
            if fps is not None:
                targets = np.arange(max(1, math.floor(duration * fps + 1e-6))) / fps
                chosen = _nearest(((t, (t, f)) for _, t, f in decoded), targets)
            elif n_frames is not None:
                total = stream.frames or round((duration or 0.0) * (native or 0.0)) or n_frames
                targets = np.linspace(0, total - 1, n_frames).round()
                chosen = _nearest(((i, (t, f)) for i, t, f in decoded), targets)
            else:
                chosen = [(t, f) for _, t, f in decoded]
            rgb: list[np.ndarray] = []
            for k, (_, f) in enumerate(chosen):  # repeated picks are consecutive: convert once
                rgb.append(rgb[-1] if k and f is chosen[k - 1][1] else f.to_ndarray(format="rgb24"))
        except av.FFmpegError as e:
            raise MediaError(f"could not decode '{path}' as video ({e}); {fix}") from e
    if not chosen:
        raise MediaError(f"video '{path}' contains no decodable frames; {fix}")
    times = np.array([t for t, _ in chosen], dtype=np.float64)
    if duration is None:
        duration = float(times[-1]) + 1.0 / (native or 1.0)
    if fps is None:
        fps = n_frames / duration if n_frames is not None else native or len(chosen) / duration
    return VideoClip(np.stack(rgb), float(fps), float(duration), times)


def _audio_stream(container: av.container.OutputContainer, codec: str, sample_rate: int,
                  channels: int = 1) -> av.AudioStream:
    stream = container.add_stream(codec, rate=int(sample_rate), layout=_LAYOUTS[channels])
    stream.time_base = Fraction(1, int(sample_rate))
    return stream


def _encode_audio(container, stream, wave: np.ndarray, start: int) -> None:
    """Encode ``wave [n, channels]`` from sample ``start`` on."""
    samples = np.ascontiguousarray(wave.T, dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=_LAYOUTS[wave.shape[1]])
    frame.sample_rate, frame.pts, frame.time_base = stream.rate, start, stream.time_base
    container.mux(stream.encode(frame))


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    lossless: bool = False,
) -> None:
    """Write uint8 RGB ``frames [T, H, W, 3]`` as an h264/yuv420p mp4 at ``fps``.

    H and W must be even.  If ``audio`` (float in [-1, 1] at ``sample_rate``, ``[n]`` or
    ``[n, channels]``) is given it is muxed as an AAC track, interleaved with the frames.
    ``lossless`` encodes with quantiser 0: the decoded frames are then the same on every
    write, which libx264's lossy encoding did not guarantee here (7 of 14 rewrites of a
    planted clip decoded to other frames, one encoder thread or not; 0 of 14 lossless).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise MediaError(
            f"frames must be non-empty uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}; "
            "convert with .astype(np.uint8)"
        )
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise MediaError(f"frames are {h}x{w} but yuv420p needs even height and width; crop or pad by one pixel")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    wave = np.clip(_channels(audio), -1.0, 1.0) if audio is not None else None
    codec = next(c for c in _VIDEO_CODECS if c in av.codecs_available)  # mpeg4 is always built in
    with av.open(str(path), "w", format="mp4") as c:
        if lossless and codec != "libx264":
            raise MediaError(f"lossless video needs the libx264 encoder, and this PyAV has only {codec}: "
                             "install PyAV's wheel (pip install av), which ships it")
        options = {"qp": "0"} if lossless else {}
        vs = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = _audio_stream(c, "aac", sample_rate, wave.shape[1]) if wave is not None else None
        done = 0
        for i, img in enumerate(frames):
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            end = min(len(wave), round((i + 1) * sample_rate / fps)) if wave is not None else 0
            if end > done:  # interleave audio with the frame it accompanies
                _encode_audio(c, aus, wave[done:end], done)
                done = end
        c.mux(vs.encode())
        if aus is not None:
            if done < len(wave):
                _encode_audio(c, aus, wave[done:], done)
            c.mux(aus.encode())


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a float ``wave`` (``[n]`` or ``[n, channels]``): wav/flac/ogg via soundfile, mp3/m4a via
    PyAV (chosen by extension)."""
    wave, suffix = np.clip(_channels(wave), -1.0, 1.0), Path(path).suffix.lower()
    if suffix in _SOUNDFILE_EXTS:
        sf.write(str(path), wave, int(sample_rate))
    elif suffix in _AV_AUDIO_CODECS:
        with av.open(str(path), "w") as c:
            stream = _audio_stream(c, _AV_AUDIO_CODECS[suffix], sample_rate, wave.shape[1])
            _encode_audio(c, stream, wave, 0)
            c.mux(stream.encode())
    else:
        raise MediaError(f"cannot write audio to '{path}' ({suffix!r}); use a .wav, .flac, .mp3 or .m4a path")


def tone(freq_hz: float, seconds: float, sample_rate: int = SAMPLE_RATE, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine of ``freq_hz`` lasting ``seconds``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def chirp(
    f0: float, f1: float, seconds: float, sample_rate: int = SAMPLE_RATE, amplitude: float = 0.5
) -> np.ndarray:
    """A float32 linear chirp sweeping ``f0`` -> ``f1`` Hz over ``seconds``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (amplitude * np.sin(phase)).astype(np.float32)


def moving_shape_frames(
    n_frames: int,
    height: int,
    width: int,
    shape: str = "square",
    color: tuple[int, int, int] = (255, 0, 0),
    background: tuple[int, int, int] = (0, 0, 0),
    seed: int = 0,
) -> np.ndarray:
    """Uint8 ``[T, H, W, 3]`` frames of a ``"square"`` or ``"circle"`` crossing the frame horizontally.

    ``seed`` fixes the row and the direction of travel, so equal arguments give equal frames.
    """
    if shape not in ("square", "circle"):
        raise ValueError(f"shape must be 'square' or 'circle', got {shape!r}")
    rng = np.random.default_rng(seed)
    r = max(1, min(height, width) // 8)
    cy = rng.uniform(r, max(r, height - 1 - r))
    cx = np.linspace(r, max(r, width - 1 - r), n_frames)
    if rng.random() < 0.5:
        cx = cx[::-1]
    yy, xx = np.mgrid[:height, :width]
    dx, dy = xx[None] - cx[:, None, None], (yy - cy)[None]
    mask = dx**2 + dy**2 <= r**2 if shape == "circle" else (np.abs(dx) <= r) & (np.abs(dy) <= r)
    out = np.empty((n_frames, height, width, 3), np.uint8)
    out[:] = np.asarray(background, np.uint8)
    out[mask] = np.asarray(color, np.uint8)
    return out
