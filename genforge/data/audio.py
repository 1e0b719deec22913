"""Audio: reading WAV/FLAC, resampling, fixed-length clips, STFT, mel filterbank, log-mel,
Griffin-Lim, SpecAugment masking, and the audio datasets (`fsdd`, a folder per label).

torchaudio does not install beside the CPU torch build used here, so the signal processing is
written against its definitions (and tested against librosa as an oracle):
  STFT           torch.stft with a periodic Hann window, frames centred (zero padding)
  mel scale      Slaney's (linear below 1 kHz, logarithmic above; Auditory Toolbox) or HTK's
                 (2595 log10(1 + f / 700)); triangular filters, Slaney area normalisation
  Griffin-Lim    Griffin & Lim (1984), "Signal estimation from modified short-time Fourier
                 transform", with the momentum of Perraudin et al. (2013), "A fast Griffin-Lim
                 algorithm"
  SpecAugment    Park et al. (2019): frequency and time masks on the log-mel spectrogram

Longer than the usual ~400 lines: the signal processing that torchaudio would provide
(I/O, resampling, STFT, mel, Griffin-Lim) is written out here, next to the datasets that use it.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genforge.data.registry import DataError, search_roots

AUDIO_SUFFIXES = (".wav", ".flac")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# ---------------------------------------------------------------------------------------
# reading


class UnreadableAudio(DataError):
    """A file that is not audio genforge can read (the message names it and the fix)."""


def _name(src) -> str:
    return "the upload" if isinstance(src, (bytes, bytearray)) else str(src)


def _pcm_to_float(raw: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM -> float32 (channels, n) in [-1, 1)."""
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:  # no numpy dtype: sign-extend three bytes into an int32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(width)
    return x.reshape(-1, channels).T


def read_audio(src: str | Path | bytes, max_seconds: float | None = None
               ) -> tuple[np.ndarray, int, float]:
    """A WAV (8/16/24/32-bit integer PCM) or FLAC file, as a path or bytes ->
    (float32 samples (channels, n), sample rate, the whole file's duration in seconds).
    With `max_seconds`, only that much is decoded (a 10-minute upload costs no more than a clip)."""
    name = _name(src)
    if isinstance(src, (bytes, bytearray)):
        data = bytes(src)
        head = data[:12]
    else:
        p = Path(src)
        if not p.is_file():
            raise FileNotFoundError(f"audio file not found: {src}")
        with open(p, "rb") as f:
            head = f.read(12)
        data = None
    if head[:4] == b"fLaC":
        return _read_flac(src, name, max_seconds)
    if not (head[:4] == b"RIFF" and head[8:12] == b"WAVE"):
        raise UnreadableAudio(f"{name} is not audio genforge can read (neither a WAV nor a FLAC "
                              "file); convert it to WAV, e.g. `ffmpeg -i INPUT -ar 16000 out.wav`")
    try:
        with wave.open(io.BytesIO(data) if data is not None else str(src), "rb") as w:
            ch, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            take = n if max_seconds is None else min(n, int(math.ceil(max_seconds * sr)))
            raw = w.readframes(take)
    except wave.Error as e:
        msg = str(e)
        if "unknown format" in msg:
            fmt = msg.rsplit(":", 1)[-1].strip()
            kind = {"3": "32/64-bit float", "6": "A-law", "7": "mu-law"}.get(fmt, f"format code {fmt}")
            raise UnreadableAudio(f"{name}: unsupported WAV sample format ({kind}); genforge reads "
                                  "8/16/24/32-bit integer PCM. Convert it, e.g. "
                                  "`ffmpeg -i INPUT -c:a pcm_s16le out.wav`") from None
        raise UnreadableAudio(f"{name} is a corrupt WAV file ({msg}); re-export or remove it") from None
    except (EOFError, OSError, ValueError) as e:
        why = str(e) or ("the file ends early" if isinstance(e, EOFError) else type(e).__name__)
        raise UnreadableAudio(f"{name} is a corrupt WAV file ({why}); re-export or remove it") from None
    if width not in (1, 2, 3, 4):
        raise UnreadableAudio(f"{name}: unsupported WAV sample width {8 * width} bits; "
                              "use 8/16/24/32-bit PCM")
    if sr <= 0 or ch <= 0:
        raise UnreadableAudio(f"{name}: WAV header declares {sr} Hz and {ch} channels; re-export it")
    usable = len(raw) - len(raw) % (width * ch)  # a cut last frame is dropped
    return _pcm_to_float(raw[:usable], width, ch), sr, n / sr


def _read_flac(src, name: str, max_seconds):
    try:
        import soundfile
    except ImportError:
        raise UnreadableAudio(f"{name} is FLAC, which needs the `soundfile` package: "
                              "`pip install soundfile`, or convert it to WAV") from None
    try:
        f = soundfile.SoundFile(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src))
        with f:
            sr, n = f.samplerate, f.frames
            take = n if max_seconds is None else min(n, int(math.ceil(max_seconds * sr)))
            x = f.read(take, dtype="float32", always_2d=True)  # (n, channels)
    except RuntimeError as e:
        raise UnreadableAudio(f"{name} is a corrupt FLAC file ({e}); re-export or remove it") from None
    return x.T.copy(), sr, n / sr


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling with scipy's Kaiser-windowed sinc low-pass (anti-aliasing when
    going down), along the last axis."""
    if sr_from == sr_to:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(sr_from, sr_to)
    return resample_poly(x, sr_to // g, sr_from // g, axis=-1).astype(np.float32)


@dataclass
class Clip:
    wave: torch.Tensor  # (n,) float32 mono at the requested rate, padded/cropped to length
    seconds: float  # the file's whole duration
    cropped: bool  # longer than the clip length: only its start was kept


MIN_SAMPLES = 2


def load_clip(src: str | Path | bytes, sample_rate: int, length: int) -> Clip:
    """Any readable file -> mono at `sample_rate`, zero-padded or cropped to `length` samples
    (the start is kept: FSDD-style recordings begin at the word)."""
    max_s = length / sample_rate + 0.05  # a little more so resampling has its context
    x, sr, seconds = read_audio(src, max_s)
    if x.shape[1] < MIN_SAMPLES:
        raise UnreadableAudio(f"{_name(src)} holds {x.shape[1]} sample(s); a clip needs at least "
                              f"{MIN_SAMPLES} (record or export a longer one)")
    mono = x.mean(axis=0)  # mixdown: the average of the channels
    mono = resample(mono, sr, sample_rate)
    w = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    cropped = len(w) > length
    w = w[:length] if cropped else torch.nn.functional.pad(w, (0, length - len(w)))
    return Clip(w, seconds, cropped)


def wav_bytes(wave_: torch.Tensor, sample_rate: int) -> bytes:
    """(n,) float in [-1, 1] -> 16-bit PCM mono WAV file bytes."""
    pcm = (wave_.detach().float().clamp(-1, 1) * 32767).round().to(torch.int16).numpy()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def write_wav(path: str | Path, wave_: torch.Tensor, sample_rate: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(wave_, sample_rate))
    return path


# ---------------------------------------------------------------------------------------
# spectrograms


@dataclass(frozen=True)
class Features:
    """How a waveform becomes a log-mel spectrogram; saved in each run's config."""
    sample_rate: int = 8000
    n_fft: int = 256
    hop: int = 128
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float = 0.0  # 0 = sample_rate / 2
    htk: bool = False  # mel scale: HTK's formula instead of Slaney's

    def frames(self, length: int) -> int:
        return 1 + length // self.hop  # centred frames


def hann(n: int, device=None) -> torch.Tensor:
    return torch.hann_window(n, periodic=True, device=device)  # periodic: the STFT (COLA) form


def stft(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """(..., n) -> complex (..., n_fft // 2 + 1, 1 + n // hop), Hann window of n_fft, frames
    centred on t * hop with zero padding (librosa's default framing)."""
    shape = x.shape
    X = torch.stft(x.reshape(-1, shape[-1]), n_fft, hop, window=hann(n_fft, x.device),
                   center=True, pad_mode="constant", return_complex=True)
    return X.reshape(*shape[:-1], *X.shape[-2:])


def istft(X: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    shape = X.shape
    x = torch.istft(X.reshape(-1, *shape[-2:]), n_fft, hop, window=hann(n_fft, X.device),
                    center=True, length=length)
    return x.reshape(*shape[:-2], length)


def hz_to_mel(f: torch.Tensor, htk: bool = False) -> torch.Tensor:
    f = torch.as_tensor(f, dtype=torch.float64)
    if htk:
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    # Slaney: 3 mels per 200 Hz up to 1 kHz (15 mels there), then log-spaced at 27 mels per
    # factor 6.4 in frequency
    lin = f * 3.0 / 200.0
    log = 15.0 + torch.log(torch.clamp(f, min=1e-10) / 1000.0) * 27.0 / math.log(6.4)
    return torch.where(f >= 1000.0, log, lin)


def mel_to_hz(m: torch.Tensor, htk: bool = False) -> torch.Tensor:
    m = torch.as_tensor(m, dtype=torch.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    lin = m * 200.0 / 3.0
    log = 1000.0 * torch.exp((m - 15.0) * math.log(6.4) / 27.0)
    return torch.where(m >= 15.0, log, lin)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float = 0.0, htk: bool = False) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, centres evenly spaced on the mel scale,
    each scaled to unit area in Hz (2 / bandwidth: Slaney's normalisation, so that a flat
    spectrum gives roughly equal energy per band)."""
    fmax = fmax or sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(fmin, htk)), float(hz_to_mel(fmax, htk)),
                                     n_mels + 2, dtype=torch.float64), htk)  # (n_mels + 2,)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lo) / (mid - lo)
    falling = (hi - freqs[None]) / (hi - mid)
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)
    fb = fb * (2.0 / (hi - lo))
    return fb.float()


LOG_FLOOR = 1e-6  # power floor before the log: silence (digital zero) would be -inf


def mel_power(x: torch.Tensor, f: Features) -> torch.Tensor:
    """(..., n) waveform -> (..., n_mels, frames) mel-band power."""
    S = stft(x, f.n_fft, f.hop).abs() ** 2
    fb = mel_filterbank(f.sample_rate, f.n_fft, f.n_mels, f.fmin, f.fmax, f.htk).to(x.device)
    return torch.einsum("mf,...ft->...mt", fb, S)


def log_mel(x: torch.Tensor, f: Features) -> torch.Tensor:
    return torch.log(mel_power(x, f) + LOG_FLOOR)


def mel_to_linear(mel: torch.Tensor, f: Features, iters: int = 100) -> torch.Tensor:
    """Mel-band power (..., n_mels, T) -> non-negative linear power (..., n_freq, T) whose mel
    projection fits it: non-negative least squares by Lee & Seung's multiplicative updates,
    started from the clamped pseudo-inverse."""
    fb = mel_filterbank(f.sample_rate, f.n_fft, f.n_mels, f.fmin, f.fmax, f.htk).to(mel.device)
    S = torch.einsum("fm,...mt->...ft", torch.linalg.pinv(fb), mel).clamp(min=1e-10)
    num = torch.einsum("mf,...mt->...ft", fb, mel)
    for _ in range(iters):
        den = torch.einsum("mf,...mt->...ft", fb, torch.einsum("mf,...ft->...mt", fb, S))
        S = S * num / (den + 1e-12)
    return S


def spectral_convergence(target_mag: torch.Tensor, x: torch.Tensor, n_fft: int, hop: int) -> float:
    """||S - |STFT(x)|||_F / ||S||_F: how far a waveform's magnitudes are from the target."""
    est = stft(x, n_fft, hop).abs()
    return float(torch.linalg.norm(target_mag - est) / torch.linalg.norm(target_mag))


def griffin_lim(mag: torch.Tensor, n_fft: int, hop: int, length: int, iters: int = 64,
                momentum: float = 0.99, seed: int = 0) -> torch.Tensor:
    """Magnitudes (..., n_fft // 2 + 1, T) -> a waveform (..., length) whose STFT magnitudes
    approach them: alternate projections onto consistent spectrograms (istft -> stft) and onto
    the given magnitudes, from random phases, with Perraudin et al.'s momentum."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(mag.shape, generator=g).to(mag.device) * 2 * math.pi
    X = mag * torch.exp(1j * phase)
    prev = torch.zeros_like(X)
    for _ in range(iters):
        rebuilt = stft(istft(X, n_fft, hop, length), n_fft, hop)
        accel = rebuilt + momentum / (1 + momentum) * (rebuilt - prev)  # fast Griffin-Lim
        prev = rebuilt
        X = mag * torch.exp(1j * torch.angle(accel))
    return istft(X, n_fft, hop, length)


def spec_augment(x: torch.Tensor, gen: torch.Generator, freq_masks: int = 2, freq_width: int = 6,
                 time_masks: int = 2, time_width: int = 10, fill: float = 0.0) -> torch.Tensor:
    """(B, C, n_mels, T) -> a copy with `freq_masks` bands of up to `freq_width` mel bins and
    `time_masks` spans of up to `time_width` frames set to `fill` per example (Park et al.
    2019; the time warping of the paper is left out, it added little there)."""
    x = x.clone()
    B, _, M, T = x.shape
    for _ in range(freq_masks):
        w = torch.randint(0, freq_width + 1, (B,), generator=gen)
        f0 = (torch.rand(B, generator=gen) * (M - w + 1).clamp(min=1)).long()
        band = torch.arange(M)[None]
        mask = (band >= f0[:, None]) & (band < (f0 + w)[:, None])  # (B, M)
        x = x.masked_fill(mask[:, None, :, None], fill)
    for _ in range(time_masks):
        w = torch.randint(0, time_width + 1, (B,), generator=gen)
        t0 = (torch.rand(B, generator=gen) * (T - w + 1).clamp(min=1)).long()
        span = torch.arange(T)[None]
        mask = (span >= t0[:, None]) & (span < (t0 + w)[:, None])  # (B, T)
        x = x.masked_fill(mask[:, None, None, :], fill)
    return x


# ---------------------------------------------------------------------------------------
# datasets

# The Free Spoken Digit Dataset (Jakobovski et al., CC BY-SA 4.0), release v1.0.10: the
# archive's recordings/ folder. GitHub's archives are not byte-stable, so the check is a
# digest of the content: sha256 over "name sha256(file)\n" lines of the sorted recordings.
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
FSDD_CONTENT_SHA256 = "dbd573d7cafe79c4b49f65718115e1304e24e067fa39eff18a660dc6cb9c360f"  # of the 3,000 recordings


def content_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.wav")):
        h.update(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def _download_fsdd(dest: Path) -> Path:
    """Fetch the release archive, extract recordings/*.wav, check the content digest, then
    move the folder into place (a failed or altered download leaves nothing behind)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".fsdd."))
    try:
        archive = tmp / "fsdd.tar.gz"
        try:
            with urllib.request.urlopen(FSDD_URL, timeout=60) as r, open(archive, "wb") as out:
                shutil.copyfileobj(r, out)
        except OSError as e:
            raise DataError(f"could not download {FSDD_URL}: {e}") from None
        rec = tmp / "recordings"
        rec.mkdir()
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if m.isfile() and "/recordings/" in m.name and m.name.endswith(".wav"):
                    with tf.extractfile(m) as src, open(rec / Path(m.name).name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        got = content_digest(rec)
        if got != FSDD_CONTENT_SHA256:
            raise DataError(f"fsdd: the downloaded recordings' content digest is {got}, expected "
                            f"{FSDD_CONTENT_SHA256}; the download was discarded")
        os.replace(rec, dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsdd_folder(data_dir: str = "") -> Path:
    """The folder of FSDD recordings: `<root>/fsdd/recordings` under the usual search roots,
    else downloaded into the user cache."""
    tried = [root / "fsdd" / "recordings" for root in search_roots(data_dir)]
    for p in tried:
        if p.is_dir() and any(p.glob("*.wav")):
            return p
    if os.environ.get("GENFORGE_OFFLINE") != "1":
        try:
            return _download_fsdd(tried[-1])
        except DataError as e:
            reason = str(e)
    else:
        reason = "downloads are off (GENFORGE_OFFLINE=1)"
    looked = "\n  ".join(str(p) for p in tried)
    raise DataError(f"dataset 'fsdd': no recordings found. Looked in:\n  {looked}\n"
                    f"Download failed: {reason}.\nPut the WAV files in one of those folders, or "
                    f"set GENFORGE_DATA / --data-dir to a folder containing fsdd/recordings/.")


@dataclass
class AudioSet:
    """Clips of a dataset or folder, before feature extraction."""
    waves: torch.Tensor  # (N, length) float32
    labels: torch.Tensor  # (N,) long
    names: list[str]  # file names (for messages)
    groups: list[str]  # FSDD: "test"/"train" by the customary split; folders: ""
    speakers: list[str]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # "name: reason" of unreadable files
    cropped: int = 0


def _report(s: AudioSet, source: str, seconds: float) -> None:
    """Say once what the loader left out or cut (stderr: it is advice, not output)."""
    if s.skipped:
        shown = "\n  ".join(s.skipped[:10]) + ("\n  ..." if len(s.skipped) > 10 else "")
        print(f"note: skipped {len(s.skipped)} of {len(s.skipped) + len(s.names)} files in "
              f"{source} that are not readable audio:\n  {shown}", file=sys.stderr)
    if s.cropped:
        print(f"note: {s.cropped} of {len(s.names)} clips in {source} are longer than "
              f"{seconds:g} s and were cropped to their first {seconds:g} s (the `duration` "
              "setting)", file=sys.stderr)


def _load_files(files: list[tuple[Path, int, str, str]], classes: list[str], sample_rate: int,
                length: int) -> AudioSet:
    waves, labels, names, groups, speakers, skipped, cropped = [], [], [], [], [], [], 0
    for path, label, group, speaker in files:
        try:
            c = load_clip(path, sample_rate, length)
        except UnreadableAudio as e:
            skipped.append(str(e).replace(str(path), path.name))
            continue
        waves.append(c.wave)
        labels.append(label)
        names.append(path.name)
        groups.append(group)
        speakers.append(speaker)
        cropped += c.cropped
    if not waves:
        raise DataError("no readable audio among " + str(len(files)) + " files; "
                        + (skipped[0] if skipped else ""))
    return AudioSet(torch.stack(waves), torch.tensor(labels), names, groups, speakers,
                    classes, skipped, cropped)


@functools.lru_cache(maxsize=4)
def load_audio_set(data: str, data_dir: str, sample_rate: int, length: int) -> AudioSet:
    """`fsdd` (labels zero..nine; FSDD's customary split: indices 0-4 of every speaker and digit
    are the test set) or a folder `data/<label>/<clip>.wav|.flac`. Cached: recipes ask for it
    once per split."""
    seconds = length / sample_rate
    if data == "fsdd":
        folder = fsdd_folder(data_dir)
        files = []
        for p in sorted(folder.glob("*.wav")):
            parts = p.stem.split("_")
            if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
                continue  # not an FSDD recording name ({digit}_{speaker}_{index}.wav)
            group = "test" if int(parts[2]) < 5 else "train"
            files.append((p, int(parts[0]), group, parts[1]))
        s = _load_files(files, list(DIGITS), sample_rate, length)
        _report(s, str(folder), seconds)
        return s
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"audio data {data!r} is neither a named dataset (fsdd) nor a folder; "
                        "give a folder with one subfolder of WAV/FLAC clips per label "
                        "(path/to/folder/<label>/<clip>.wav)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no label subfolders; expected {root}/<label>/<clip>.wav")
    files = [(p, i, "", "") for i, c in enumerate(classes) for p in sorted((root / c).iterdir())
             if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
    if not files:
        raise DataError(f"{root}: the label folders hold no .wav or .flac files")
    s = _load_files(files, classes, sample_rate, length)
    _report(s, str(root), seconds)
    return s
