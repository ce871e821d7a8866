"""Tests for avmech.media: round trips through real encoders/decoders (PyAV, soundfile)."""

from __future__ import annotations

import math
import shutil

import av
import numpy as np
import pytest
import soundfile as sf

from avmech import media
from avmech.media import SAMPLE_RATE, MediaError


def _peak_hz(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sample_rate)[np.argmax(spectrum)])


@pytest.fixture
def av_clip(tmp_path):
    """A 3 s, 10 fps clip with a flat-colored first half, a moving square and a 440 Hz tone."""
    frames = media.moving_shape_frames(30, 64, 96, "square", color=(250, 250, 250), background=(30, 90, 160))
    frames[:15] = (200, 40, 60)
    audio = media.tone(440.0, 3.0)
    path = tmp_path / "clip.mp4"
    media.write_video(path, frames, fps=10, audio=audio)
    return path, frames, audio


def test_video_roundtrip_native_rate(av_clip):
    path, frames, _ = av_clip
    info = media.probe(path)
    assert info.has_video and info.has_audio
    assert (info.width, info.height, info.n_frames, info.fps) == (96, 64, 30, 10.0)
    assert info.audio_sample_rate == SAMPLE_RATE
    clip = media.read_video(path)
    assert clip.frames.shape == frames.shape and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(10.0)
    assert abs(clip.duration_s - 3.0) <= 0.1  # within one frame
    np.testing.assert_allclose(clip.timestamps, np.arange(30) / 10, atol=1e-6)
    flat_error = np.abs(clip.frames[:15].astype(int) - frames[:15].astype(int)).mean()
    assert flat_error < 20
    # the moving square is decoded where it was drawn
    assert np.abs(clip.frames[20].astype(int) - frames[20].astype(int)).mean() < 20
    # channel order checked against a plain PyAV decode (a symmetric RGB/BGR swap would round-trip)
    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    np.testing.assert_array_equal(clip.frames[0], first)
    assert np.abs(first.reshape(-1, 3).mean(0) - (200, 40, 60)).max() < 10


def test_video_sampling_by_fps_and_count(av_clip):
    path, frames, _ = av_clip
    clip = media.read_video(path, fps=2)
    assert len(clip.frames) == math.floor(3.0 * 2) == 6
    assert clip.fps == 2
    assert np.all(np.diff(clip.timestamps) > 0)
    np.testing.assert_allclose(clip.timestamps, np.arange(6) / 2, atol=1e-6)
    # frame picked for t=2.0 s is native frame 20
    assert np.abs(clip.frames[4].astype(int) - frames[20].astype(int)).mean() < 20
    clip = media.read_video(path, n_frames=4)
    np.testing.assert_allclose(clip.timestamps, np.array([0, 10, 19, 29]) / 10, atol=1e-6)
    assert clip.frames.shape == (4, 64, 96, 3)
    with pytest.raises(ValueError, match="at most one"):
        media.read_video(path, fps=2, n_frames=4)


def test_audio_track_roundtrip(av_clip):
    path, _, audio = av_clip
    decoded = media.read_audio(path)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - len(audio)) <= 2048
    assert np.abs(decoded).max() <= 1.0
    n = min(len(decoded), len(audio))
    assert np.corrcoef(decoded[:n], audio[:n])[0, 1] > 0.9
    assert abs(_peak_hz(decoded, SAMPLE_RATE) - 440.0) < 5
    assert len(media.read_audio(path, sample_rate=8000)) == pytest.approx(len(decoded) / 2, abs=2)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3"])
def test_audio_file_roundtrip(tmp_path, suffix):
    if suffix == ".mp3" and "libmp3lame" not in av.codecs_available:
        pytest.skip("this PyAV build has no mp3 encoder (libmp3lame)")
    wave = media.chirp(200.0, 2000.0, 1.0, sample_rate=22050)
    path = tmp_path / f"chirp{suffix}"
    media.write_audio(path, wave, sample_rate=22050)
    info = media.probe(path)
    assert info.has_audio and not info.has_video and info.audio_sample_rate == 22050
    decoded = media.read_audio(path, sample_rate=22050)
    expected = wave
    if suffix == ".mp3":  # lossy, with encoder delay: align before comparing
        assert abs(len(decoded) - len(wave)) <= 2048
        lag = int(np.argmax(np.correlate(decoded[:4096], wave[:2048], "valid")))
        decoded, expected = decoded[lag : lag + len(wave) - 2048], wave[: len(wave) - 2048]
        assert np.corrcoef(decoded, expected)[0, 1] > 0.9
    else:
        assert len(decoded) == len(wave)
        np.testing.assert_allclose(decoded, expected, atol=1e-3)


def test_resample_preserves_frequency_and_length():
    n = 44_100 * 2
    wave = media.tone(1000.0, 2.0, sample_rate=44_100)
    out = media.resample(wave, 44_100, 16_000)
    assert out.dtype == np.float32
    assert abs(len(out) - n * 16_000 / 44_100) <= 2
    assert abs(_peak_hz(out, 16_000) - 1000.0) < 5
    # anti-aliasing: a 12 kHz tone (above the new 8 kHz Nyquist) is removed, not folded back to 4 kHz
    aliased = media.resample(media.tone(12_000.0, 2.0, sample_rate=44_100), 44_100, 16_000)
    assert np.abs(aliased[100:-100]).max() < 0.01  # edges hold the onset transient
    stereo = np.stack([wave, wave], axis=1)
    np.testing.assert_allclose(media.resample(stereo, 44_100, 16_000), out, atol=1e-6)
    with pytest.raises(MediaError, match="transpose"):
        media.resample(np.zeros((2, 100)), 44_100, 16_000)


def test_reading_audio_from_silent_video_raises(tmp_path):
    path = tmp_path / "silent.mp4"
    media.write_video(path, media.moving_shape_frames(5, 32, 32, "circle"), fps=5)
    assert not media.probe(path).has_audio
    with pytest.raises(MediaError, match="no audio track"):
        media.read_audio(path)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.mp4"
    for reader in (media.read_video, media.read_audio, media.probe):
        with pytest.raises(MediaError, match="nope.mp4.*does not exist"):
            reader(path)


@pytest.mark.parametrize("suffix", [".mp4", ".wav"])
def test_text_file_is_not_media(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("this is not a media file\n" * 20)
    with pytest.raises(MediaError, match="could not decode"):
        media.read_audio(path)
    with pytest.raises(MediaError, match=f"notes{suffix}"):
        media.read_video(path)


def test_odd_frame_size_raises(tmp_path):
    with pytest.raises(MediaError, match="even"):
        media.write_video(tmp_path / "odd.mp4", np.zeros((3, 33, 32, 3), np.uint8), fps=5)
    with pytest.raises(MediaError, match="uint8"):
        media.write_video(tmp_path / "f.mp4", np.zeros((3, 32, 32, 3), np.float32), fps=5)


def test_synthetic_helpers_are_deterministic():
    a = media.moving_shape_frames(6, 40, 60, "circle", color=(0, 255, 0), seed=3)
    assert a.shape == (6, 40, 60, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, media.moving_shape_frames(6, 40, 60, "circle", color=(0, 255, 0), seed=3))
    green_cols = [np.nonzero(f[..., 1].any(axis=0))[0].mean() for f in a]
    assert len(set(np.sign(np.diff(green_cols)))) == 1  # moves monotonically across
    assert len(media.tone(440.0, 0.5)) == SAMPLE_RATE // 2
    sweep = media.chirp(100.0, 4000.0, 1.0)
    assert _peak_hz(sweep[:2000], SAMPLE_RATE) < _peak_hz(sweep[-2000:], SAMPLE_RATE)


def test_stereo_is_averaged_the_same_by_both_decoders(tmp_path):
    wave = media.tone(440.0, 0.5)
    sf.write(tmp_path / "stereo.wav", np.stack([wave, 0.5 * wave], axis=1), SAMPLE_RATE)
    shutil.copy(tmp_path / "stereo.wav", tmp_path / "stereo.bin")  # unknown suffix: decoded by PyAV
    via_soundfile = media.read_audio(tmp_path / "stereo.wav")
    via_pyav = media.read_audio(tmp_path / "stereo.bin")
    np.testing.assert_allclose(via_soundfile, 0.75 * wave, atol=1e-4)
    np.testing.assert_array_equal(via_pyav, via_soundfile)  # both read the same 16-bit samples


def _stereo(rate: int, seconds: float = 1.0):
    t = np.arange(round(rate * seconds)) / rate
    left = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    right = (0.3 * np.sin(2 * np.pi * 700 * t) * (t < seconds / 2)).astype(np.float32)
    return left, right


def test_ffmpeg_recipe_downmixes_as_torchcodec_does(tmp_path):
    """video-SALMONN 2+ decodes with torchcodec, num_channels=1: FFmpeg's (L + R) / sqrt(2), not the mean."""
    left, right = _stereo(SAMPLE_RATE)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    got = media.read_audio(tmp_path / "stereo.wav", recipe="ffmpeg")
    np.testing.assert_allclose(got, (left + right) / np.sqrt(2), atol=1e-6)
    assert np.abs(got - (left + right) / 2).max() > 0.1
    arrays = media.resample(np.stack([left, right], axis=1), SAMPLE_RATE, SAMPLE_RATE, recipe="ffmpeg")
    np.testing.assert_allclose(arrays, got, atol=1e-6)


def test_librosa_recipe_means_channels_and_resamples_with_soxr(tmp_path):
    """Qwen2.5-Omni's qwen-omni-utils reads sound with librosa.load(sr=16000): the channel mean,
    soxr's high-quality resampler, ceil(n * 16000 / rate) samples; mp4 tracks as 16-bit PCM."""
    import soxr

    left, right = _stereo(SAMPLE_RATE)
    sf.write(tmp_path / "same.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(media.read_audio(tmp_path / "same.wav"), (left + right) / 2, atol=1e-7)
    left, right = _stereo(44_100, seconds=1.3)
    sf.write(tmp_path / "cd.wav", np.stack([left, right], axis=1), 44_100, subtype="FLOAT")
    got = media.read_audio(tmp_path / "cd.wav")
    assert len(got) == math.ceil(len(left) * SAMPLE_RATE / 44_100)
    reference = soxr.resample((left + right) / 2, 44_100, SAMPLE_RATE, quality="HQ")
    n = min(len(reference), len(got))
    np.testing.assert_allclose(got[:n], reference[:n], atol=1e-6)
    assert np.abs(got - media.read_audio(tmp_path / "cd.wav", recipe="ffmpeg") / np.sqrt(2)).max() > 1e-4
    # a track inside a video is read as 16-bit PCM, as audioread hands FFmpeg's output to librosa
    media.write_video(tmp_path / "clip.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=4,
                      audio=np.stack([left, right], axis=1)[: 44_100], sample_rate=44_100)
    pcm = media.read_audio(tmp_path / "clip.mp4")
    with av.open(str(tmp_path / "clip.mp4")) as c:
        floats = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    reference = soxr.resample(floats.mean(axis=0), 44_100, SAMPLE_RATE, quality="HQ")
    assert np.abs(pcm[: len(reference)] - reference[: len(pcm)]).max() < 1e-3  # the 16-bit quantisation
    assert not np.array_equal(pcm[: len(reference)], reference[: len(pcm)].astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_waveforms_are_refused(bad):
    wave = media.tone(440.0, 0.2)
    wave[10] = bad
    for recipe in media.RECIPES:
        with pytest.raises(MediaError, match="NaN or infinite"):
            media.resample(wave, SAMPLE_RATE, SAMPLE_RATE, recipe=recipe)


@pytest.mark.parametrize("rate", [-5, 0, 16000.5, True])
def test_a_bad_sample_rate_names_the_fix(rate):
    with pytest.raises(MediaError, match="positive whole number"):
        media.resample(media.tone(440.0, 0.2), rate)
