"""Audio I/O and signal processing: WAV formats, mixdown, resampling, STFT / mel filterbank /
log-mel against librosa (the oracle), Griffin-Lim quality, SpecAugment, FSDD and folders, and
one clear message for each kind of bad input."""
import io
import math
import wave

import numpy as np
import pytest
import torch

from genforge.data import audio as A
from genforge.data.registry import DataError

librosa = pytest.importorskip("librosa")
FSDD_CLIP = "fsdd/recordings/7_jackson_32.wav"


@pytest.fixture
def clip(data_root):
    x, sr, _ = A.read_audio(data_root / FSDD_CLIP)
    return torch.from_numpy(x[0]), sr


@pytest.fixture
def data_root():
    import os
    from pathlib import Path

    root = os.environ.get("GENFORGE_DATA")
    if not root or not (Path(root) / "fsdd").is_dir():
        pytest.skip("GENFORGE_DATA with fsdd/ is needed")
    return Path(root)


def _wav(samples: np.ndarray, sr: int, width: int) -> bytes:
    """int samples (n, channels) -> WAV bytes with the given sample width."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(sr)
        if width == 3:
            raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in samples.reshape(-1))
        else:
            raw = samples.astype({1: "u1", 2: "<i2", 4: "<i4"}[width]).tobytes()
        w.writeframes(raw)
    return buf.getvalue()


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_read_to_the_same_signal(width):
    t = np.arange(800) / 8000
    sig = 0.5 * np.sin(2 * np.pi * 440 * t)
    full = 2 ** (8 * width - 1)
    ints = np.round(sig * (full - 1)).astype(np.int64)
    if width == 1:
        ints = ints + 128  # 8-bit WAV is unsigned
    x, sr, seconds = A.read_audio(_wav(ints[:, None], 8000, width))
    assert sr == 8000 and x.shape == (1, 800) and seconds == pytest.approx(0.1)
    assert np.abs(x[0] - sig).max() < 2.0 / full + 1e-7  # quantisation (+ float32 rounding)


def test_stereo_is_mixed_down_and_resampled(tmp_path):
    sr = 16000
    t = np.arange(sr) / sr
    left, right = np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 300 * t + 0.3)
    stereo = np.round(np.stack([left, right], 1) * 0.4 * 32767).astype(np.int64)
    p = tmp_path / "stereo.wav"
    p.write_bytes(_wav(stereo, sr, 2))
    c = A.load_clip(p, 8000, 8000)
    assert c.wave.shape == (8000,) and not c.cropped
    expect = 0.4 * 0.5 * (np.sin(2 * np.pi * 300 * t[::2]) + np.sin(2 * np.pi * 300 * t[::2] + 0.3))
    mid = slice(200, 7800)  # away from the resampling filter's edges
    assert np.abs(c.wave.numpy()[mid] - expect[mid]).max() < 2e-3


def test_flac_reads_like_wav(tmp_path, data_root):
    sf = pytest.importorskip("soundfile")
    x, sr, _ = A.read_audio(data_root / FSDD_CLIP)
    p = tmp_path / "c.flac"
    sf.write(p, x[0], sr, subtype="PCM_16")
    y, sr2, _ = A.read_audio(p)
    assert sr2 == sr and np.array_equal(x, y)


def test_stft_and_log_mel_match_librosa(clip):
    x, sr = clip
    S = A.stft(x, 256, 128).abs().numpy()
    ref = np.abs(librosa.stft(x.numpy(), n_fft=256, hop_length=128, center=True, pad_mode="constant"))
    assert S.shape == ref.shape
    assert np.abs(S - ref).max() < 1e-5 * ref.max()
    f = A.Features(sr, 256, 128, 40)
    mel = A.mel_power(x, f).numpy()
    ref_mel = librosa.feature.melspectrogram(y=x.numpy(), sr=sr, n_fft=256, hop_length=128,
                                             n_mels=40, pad_mode="constant", power=2.0)
    assert np.abs(mel - ref_mel).max() < 1e-4 * ref_mel.max()


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(8000, 256, 40, 0.0, 0.0),
                                                       (16000, 512, 64, 20.0, 7600.0),
                                                       (22050, 1024, 128, 0.0, 0.0)])
def test_mel_filterbank_matches_librosa(htk, sr, n_fft, n_mels, fmin, fmax):
    fb = A.mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk).numpy()
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax or None, htk=htk)
    assert fb.shape == ref.shape
    assert np.abs(fb - ref).max() < 1e-5 * ref.max()
    hz = np.array([0.0, 440.0, 1000.0, 3999.0])
    assert np.allclose(A.hz_to_mel(hz, htk).numpy(), librosa.hz_to_mel(hz, htk=htk), rtol=1e-6)


def test_griffin_lim_converges(clip):
    """Spectral convergence falls with the iterations and ends well below random phases."""
    x, _ = clip
    mag = A.stft(x, 256, 128).abs()
    sc = [A.spectral_convergence(mag, A.griffin_lim(mag, 256, 128, len(x), iters=k), 256, 128)
          for k in (1, 8, 32, 100)]
    assert all(a > b for a, b in zip(sc, sc[1:])), sc
    assert sc[-1] < 0.08, sc
    ours = A.spectral_convergence(mag, A.griffin_lim(mag, 256, 128, len(x), iters=32), 256, 128)
    theirs_wave = librosa.griffinlim(mag.numpy(), n_iter=32, hop_length=128, n_fft=256,
                                     length=len(x), pad_mode="constant", random_state=0)
    theirs = A.spectral_convergence(mag, torch.from_numpy(theirs_wave), 256, 128)
    assert ours < theirs * 1.5  # as good as the reference implementation, give or take


def test_mel_inversion_reproduces_the_mel_spectrogram(clip):
    x, sr = clip
    f = A.Features(sr, 512, 256, 32)
    mel = A.mel_power(x, f)
    lin = A.mel_to_linear(mel, f)
    fb = A.mel_filterbank(sr, 512, 32)
    back = fb @ lin
    assert (lin >= 0).all()
    assert float(torch.linalg.norm(back - mel) / torch.linalg.norm(mel)) < 0.05


def test_spec_augment_masks_bands_and_spans():
    x = torch.ones(4, 1, 40, 63)
    g = torch.Generator().manual_seed(0)
    y = A.spec_augment(x, g, freq_width=6, time_width=8)
    masked = y == 0
    assert masked.any() and not masked.all()
    for b in range(4):  # a frequency mask is whole rows, a time mask whole columns
        rows = masked[b, 0].all(dim=1).sum()
        cols = masked[b, 0].all(dim=0).sum()
        assert rows <= 12 and cols <= 16
        assert masked[b, 0].sum() == rows * 63 + cols * 40 - rows * cols
    again = A.spec_augment(x, torch.Generator().manual_seed(0), freq_width=6, time_width=8)
    assert torch.equal(y, again)


def test_fsdd_customary_split(data_root):
    s = A.load_audio_set("fsdd", "", 8000, 8000)
    assert len(s.names) == 3000 and s.classes[7] == "seven"
    assert s.groups.count("test") == 300 and s.groups.count("train") == 2700
    i = s.names.index("7_jackson_32.wav")
    assert s.labels[i] == 7 and s.groups[i] == "train" and s.speakers[i] == "jackson"


# ---------------------------------------------------------------------------------------
# bad input: one clear message each


def test_not_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("these are not samples")
    with pytest.raises(A.UnreadableAudio, match="neither a WAV nor a FLAC"):
        A.load_clip(p, 8000, 8000)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_one_sample_clips(n):
    with pytest.raises(A.UnreadableAudio, match=f"holds {n} sample"):
        A.load_clip(_wav(np.zeros((n, 1), np.int64), 8000, 2), 8000, 8000)


def test_unsupported_sample_format(tmp_path):
    from scipy.io import wavfile

    p = tmp_path / "float.wav"
    wavfile.write(p, 8000, np.zeros(800, np.float32))  # IEEE float WAV (format 3)
    with pytest.raises(A.UnreadableAudio, match="unsupported WAV sample format .32/64-bit float"):
        A.load_clip(p, 8000, 8000)


def test_ten_minute_clip_is_cropped(tmp_path):
    p = tmp_path / "long.wav"
    p.write_bytes(_wav(np.full((600 * 8000, 1), 1000, np.int64), 8000, 2))
    c = A.load_clip(p, 8000, 8000)
    assert c.cropped and c.seconds == pytest.approx(600.0) and c.wave.shape == (8000,)


def test_corrupt_wav_among_good_ones_is_skipped_named_counted(tmp_path, capsys, data_root):
    import shutil

    for label in ("seven", "one"):
        (tmp_path / label).mkdir()
        for i in range(3):
            shutil.copy(data_root / f"fsdd/recordings/{A.DIGITS.index(label)}_theo_{i}.wav",
                        tmp_path / label / f"{i}.wav")
    good = (tmp_path / "seven" / "0.wav").read_bytes()
    (tmp_path / "seven" / "broken.wav").write_bytes(good[:30])  # header cut short
    s = A.load_audio_set(str(tmp_path), "", 8000, 2000)
    assert len(s.names) == 6 and s.classes == ["one", "seven"]
    err = capsys.readouterr().err
    assert "skipped 1 of 7 files" in err and "broken.wav" in err
    assert "broken.wav is a corrupt WAV file (the file ends early)" in err
    assert "longer than 0.25 s and were cropped" in err


def test_missing_folder_says_what_to_give():
    with pytest.raises(DataError, match="neither a named dataset"):
        A.load_audio_set("/no/such/folder", "", 8000, 8000)
