"""Audio preprocessing for ImageBind: file or waveform -> (clips, 1, mel bins, frames) log-mels.

The pipeline (reference.md 2.3) per input:

1. decode to float32 in [-1, 1], shape (channels, samples) (PCM is scaled by 1 / 2**(bits-1),
   as ``torchaudio.load`` does);
2. resample to ``sample_rate`` (16 kHz) with the band-limited sinc/Hann resampler of
   ``torchaudio.functional.resample`` (:mod:`.resample`); no down-mix;
3. ``clips_per_video`` (3) clips of ``clip_duration`` (2 s): with D the duration in seconds,
   ``step = max(D - 2, 0) / 3`` and clip i = [i * step, i * step + 2); samples
   ``int(start * 16000) : int(end * 16000)``. The step divides by 3, not 2, so the last clip
   stops short of the end; audio of 2 s or less gives 3 clips of the whole file;
4. per clip: subtract a mean, Kaldi log-mel filterbank of channel 0 (:mod:`.fbank`; 128 bins,
   25 ms / 10 ms frames, 198 frames for 2 s), transpose to (128, frames), right-pad with zeros
   or crop to ``target_length`` (204) frames;
5. normalise ``(x - mean) / std`` with mean -4.268 and std 9.138 (zero padding becomes 0.467).

One input gives a float32 tensor (3, 1, 128, 204); :func:`load_audio_batch` stacks to
(B, 3, 1, 128, 204). CPU tensors only: the caller moves them.

Official behaviour and the correction (``AudioOptions.mode``)
--------------------------------------------------------------
``mode="official"`` reproduces ImageBind's ``load_and_transform_audio_data`` number for number,
including these flaws:

* the clip mean is taken over **all channels** of the clip, although only channel 0 enters the
  filterbank;
* the mean is subtracted **in place on a view of the shared waveform**, so when clips overlap
  (audio shorter than 8 s) a later clip sees the earlier clips' offsets on part of its samples:
  a step appears inside the clip and the frames around it change (up to 0.6 on the normalised
  values for a file with a DC offset; golden README sections 3 and 9). The emulation runs the
  same in-place subtraction on a private copy: the caller's data are never modified.
* (step 3) its clip positions use the float duration ``samples / rate`` (as the official code does);
  this can move a clip boundary by one sample.

``mode="corrected"`` (the default, :data:`~.common.DEFAULT_MODE`) copies every clip and
subtracts the mean of the channel-0 clip only, so each clip's features depend only on that
clip's samples, whatever the other clips or channels contain; clip positions use the exact
duration ``Fraction(samples, rate)``. Everything else is identical. It is the default because
the official result depends on the file's length and channel layout in ways that were never
intended; use ``"official"`` to reproduce published numbers or the golden tensors.
Both modes use channel 0 (the left channel) for the filterbank, as the model was trained that way.

Inputs
------
* a file: a path, ``bytes`` or a binary file object. WAV, FLAC, OGG (Vorbis/Opus) and MP3 are
  decoded by soundfile (libsndfile); M4A/MP4/AAC need an ``ffmpeg`` executable (found on PATH,
  or the one of the ``imageio-ffmpeg`` package if installed). The type comes from the file
  extension; bytes without a name are recognised by their content, and a file whose content is
  a different format than its extension says is refused (rename it).
* long audio is not resampled whole: only the samples around the clips are (their output
  samples are bit for bit those of the whole resampled waveform), and WAV and FLAC files (and
  the float WAV ffmpeg decodes M4A/MP4/AAC into) are only *read* around the clips, so ten
  minutes cost about what ten seconds do. MP3 and OGG, lossy streams whose samples after a
  seek could differ, are decoded whole. Anything unusual (a file that may be refused: NaN
  samples, a channel 0 constant in every sample read; a short read) goes through the whole-file
  path, so refusals are the same.
* a waveform: the tuple ``(waveform, sample_rate)``. ``waveform`` is a numpy array or a CPU
  torch tensor of floats in [-1, 1], shape ``(samples,)`` (mono) or ``(channels, samples)``
  (channels first, like ``torchaudio.load`` and ``librosa.load(mono=False)``). soundfile's
  ``sf.read`` returns ``(samples, channels)``: pass ``data.T``; an array with more rows than
  columns is refused as a probably transposed layout. Integer PCM arrays are refused (divide
  by 32768 for int16 first). The array is copied and converted to float32; values are not
  clipped or rescaled.

Refused inputs (an :class:`~imagebind_llm.errors.InputError` naming the input, the problem and
what is accepted): unsupported or misnamed formats, corrupt or empty files, files over
``max_bytes``, zero-length audio, audio shorter than one 25 ms frame after resampling, audio
longer than ``max_duration_s``, NaN or infinite samples, wrong array shapes or dtypes, invalid
sample rates, and silent audio (channel 0 constant, e.g. all zeros: its log-mel is a constant,
which carries nothing for the model). Silence is refused in both modes unless
``allow_silent=True``; the official code would return the constant tensor, and
``AudioOptions(mode="official", allow_silent=True)`` does the same.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Union

import numpy as np
import soundfile as sf
import torch

from ..errors import InputError
from .common import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MODE,
    FileInput,
    Mode,
    Source,
    as_source,
    check_mode,
    load_each,
)
from .fbank import FbankOptions, kaldi_fbank
from .resample import resample, resample_range, resample_window_input, resampled_length

__all__ = [
    "ACCEPTED_AUDIO",
    "AudioInput",
    "AudioOptions",
    "clip_sample_ranges",
    "decode_audio",
    "find_ffmpeg",
    "load_audio",
    "load_audio_batch",
    "waveform_to_clips",
]

logger = logging.getLogger(__name__)

#: A file (path, bytes, binary file object) or ``(waveform, sample_rate)``.
AudioInput = Union[FileInput, tuple]

#: Plausible audio sample rates; outside this range the input is refused as a mistake.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000

#: Seconds an ffmpeg decode may take before it is abandoned.
FFMPEG_TIMEOUT_S = 300

# Container families by extension and the decoder that handles them.
_SOUNDFILE_EXTS = {
    ".wav": "wav",
    ".flac": "flac",
    ".ogg": "ogg",
    ".oga": "ogg",
    ".opus": "ogg",
    ".mp3": "mp3",
}
_FFMPEG_EXTS = {".m4a": "mp4", ".mp4": "mp4", ".aac": "aac"}
_FFMPEG_FAMILIES = frozenset(_FFMPEG_EXTS.values())
_FORMAT_NAMES = {
    "wav": "WAV",
    "flac": "FLAC",
    "ogg": "OGG",
    "mp3": "MP3",
    "mp4": "MP4/M4A",
    "aac": "AAC (ADTS)",
    "id3": "ID3-tagged MP3/AAC",
}
# Which sniffed content each extension family accepts.
_COMPATIBLE = {
    "wav": {"wav"},
    "flac": {"flac"},
    "ogg": {"ogg"},
    "mp3": {"mp3", "id3"},
    "mp4": {"mp4", "aac", "id3"},
    "aac": {"mp4", "aac", "id3"},
}

SOUNDFILE_FORMATS_TEXT = "WAV, FLAC, OGG (Vorbis/Opus), MP3"
ACCEPTED_AUDIO = (
    f"audio files {SOUNDFILE_FORMATS_TEXT} (.wav .flac .ogg .oga .opus .mp3), and M4A/MP4/AAC "
    "(.m4a .mp4 .aac) when ffmpeg is installed; or (waveform, sample_rate) with a float array of "
    "shape (samples,) or (channels, samples)"
)


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class AudioOptions:
    """Settings of the audio pipeline; the defaults are ImageBind's (reference.md 2.3).

    Attributes:
        sample_rate: rate the audio is resampled to (Hz).
        num_mel_bins: mel filters of the Kaldi filterbank.
        target_length: frames per clip after zero-padding / cropping.
        clip_duration: seconds per clip (int, float or Fraction).
        clips_per_video: clips taken per input.
        mean, std: normalisation ``(x - mean) / std`` of the log-mel values.
        frame_length_ms, frame_shift_ms: Kaldi frame length and shift.
        mode: "official" (bit-faithful, bugs included) or "corrected" (default); see the module doc.
        allow_silent: accept audio whose channel 0 is constant (its features are constant).
        max_duration_s: refuse longer audio (decoded length); None for no limit.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 204
    clip_duration: int | float | Fraction = 2
    clips_per_video: int = 3
    mean: float = -4.268
    std: float = 9.138
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    mode: Mode = DEFAULT_MODE
    allow_silent: bool = False
    max_duration_s: float | None = 3600.0

    def __post_init__(self):
        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"AudioOptions.{name} must be a positive int, got {value!r}")

        positive_int("sample_rate", self.sample_rate)
        positive_int("num_mel_bins", self.num_mel_bins)
        positive_int("target_length", self.target_length)
        positive_int("clips_per_video", self.clips_per_video)
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(
                f"AudioOptions.sample_rate must be in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz, "
                f"got {self.sample_rate}"
            )
        if self.num_mel_bins <= 3:
            raise ValueError(f"AudioOptions.num_mel_bins must be > 3, got {self.num_mel_bins}")
        if isinstance(self.clip_duration, bool) or not isinstance(self.clip_duration, (int, float, Fraction)):
            raise ValueError(
                f"AudioOptions.clip_duration must be a number of seconds, got {self.clip_duration!r}"
            )
        if not (math.isfinite(self.clip_duration) and self.clip_duration > 0):
            raise ValueError(
                f"AudioOptions.clip_duration must be positive and finite, got {self.clip_duration!r}"
            )
        for name in ("mean", "std", "frame_length_ms", "frame_shift_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"AudioOptions.{name} must be a finite number, got {value!r}")
        if self.std <= 0:
            raise ValueError(f"AudioOptions.std must be positive, got {self.std!r}")
        try:
            check_mode(self.mode)
        except ValueError as exc:
            raise ValueError(f"AudioOptions.mode: {exc}") from None
        if not isinstance(self.allow_silent, bool):
            raise ValueError(f"AudioOptions.allow_silent must be a bool, got {self.allow_silent!r}")
        if self.max_duration_s is not None and not (
            isinstance(self.max_duration_s, (int, float))
            and not isinstance(self.max_duration_s, bool)
            and self.max_duration_s > 0
            and math.isfinite(self.max_duration_s)
        ):
            raise ValueError(
                f"AudioOptions.max_duration_s must be a positive number or None, got {self.max_duration_s!r}"
            )
        try:
            fbank = self.fbank_options
        except ValueError as exc:
            raise ValueError(f"AudioOptions: invalid filterbank settings: {exc}") from None
        if self.clip_samples < fbank.window_size:
            raise ValueError(
                f"AudioOptions.clip_duration {self.clip_duration} s holds fewer samples than one "
                f"{self.frame_length_ms} ms frame"
            )

    @property
    def fbank_options(self) -> FbankOptions:
        """The Kaldi filterbank settings (everything not listed here at ImageBind's values)."""
        return FbankOptions(
            sample_frequency=float(self.sample_rate),
            frame_length_ms=float(self.frame_length_ms),
            frame_shift_ms=float(self.frame_shift_ms),
            num_mel_bins=int(self.num_mel_bins),
        )

    @property
    def clip_samples(self) -> int:
        """Samples in a full clip."""
        return int(Fraction(self.clip_duration) * self.sample_rate)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """Shape of one input's tensor: (clips, 1, mel bins, frames)."""
        return (self.clips_per_video, 1, self.num_mel_bins, self.target_length)


def _resolve_options(options: AudioOptions | None, mode: str | None) -> AudioOptions:
    options = AudioOptions() if options is None else options
    if not isinstance(options, AudioOptions):
        raise TypeError(f"options must be an AudioOptions, got {type(options).__name__}")
    if mode is not None and mode != options.mode:
        options = dataclasses.replace(options, mode=mode)
    return options


# --------------------------------------------------------------------------------------------
# Decoding


def find_ffmpeg() -> str | None:
    """The ffmpeg executable to use: ``ffmpeg`` on PATH, else imageio-ffmpeg's, else None."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg  # optional

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        return None
    return exe if exe and os.path.isfile(exe) else None


def _sniff(head: bytes) -> str | None:
    """Audio family of a file from its first bytes; ``"other:<what>"`` for known non-audio
    content; None if unknown."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    if head[:3] == b"ID3":
        return "id3"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "other:a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "other:a JPEG image"
    if head[:4] == b"GIF8":
        return "other:a GIF image"
    if head[:5] == b"%PDF-":
        return "other:a PDF document"
    if head[:4] == b"PK\x03\x04":
        return "other:a ZIP archive"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "other:a Matroska/WebM file"
    if len(head) >= 12 and head[:4] == b"RIFF":
        kind = head[8:12].decode("latin-1")
        if kind.isascii() and kind.isprintable() and kind.strip():  # AVI, WEBP, ...
            return f"other:a RIFF {kind.strip()} file"
        return "other:a RIFF file that is not WAVE audio (a damaged WAV?)"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        layer = (head[1] >> 1) & 0x3
        return "aac" if layer == 0 else "mp3"
    return None


def _head(source: Source, n: int = 64) -> bytes:
    if source.path is None:
        return source.data[:n]  # type: ignore[index]
    try:
        with open(source.path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise source.error(f"the file cannot be read ({exc.strerror or exc})", ACCEPTED_AUDIO) from exc


def _detect_format(source: Source) -> str:
    ext = source.suffix
    sniffed = _sniff(_head(source))
    family = _SOUNDFILE_EXTS.get(ext) or _FFMPEG_EXTS.get(ext)
    if ext and family is None:
        raise source.error(f"unsupported file type '{ext}'", ACCEPTED_AUDIO)
    if family is None:  # no extension: the content decides
        if sniffed is None:
            raise source.error(
                "cannot tell the audio format: there is no file extension and the content is not a "
                "recognised audio file (pass name= with the extension if it is audio)",
                ACCEPTED_AUDIO,
            )
        if sniffed.startswith("other:"):
            raise source.error(f"not an audio file: the content is {sniffed[6:]}", ACCEPTED_AUDIO)
        return "mp3" if sniffed == "id3" else sniffed
    if sniffed is not None and sniffed not in _COMPATIBLE[family]:
        what = sniffed[6:] if sniffed.startswith("other:") else f"{_FORMAT_NAMES[sniffed]} audio"
        raise source.error(
            f"the file is named '{ext}' but its content is {what}; rename it to match its content",
            ACCEPTED_AUDIO,
        )
    return family


def _check_decoded(source_name: str, frames: int, rate: int, max_duration_s: float | None) -> None:
    if max_duration_s is not None and rate > 0 and frames / rate > max_duration_s:
        raise InputError(
            source_name,
            f"the audio is too long ({frames / rate:.1f} s, limit {max_duration_s:g} s; "
            "raise AudioOptions.max_duration_s to accept it)",
            ACCEPTED_AUDIO,
        )


def _decode_soundfile(source: Source, family: str, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    name = _FORMAT_NAMES[family]
    try:
        with source.open() as raw, sf.SoundFile(raw) as snd:
            _check_decoded(source.name, snd.frames, snd.samplerate, max_duration_s)
            data = snd.read(dtype="float32", always_2d=True)
            rate = int(snd.samplerate)
    except InputError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc)
        raise source.error(
            f"the file could not be decoded as {name} (corrupt or not {name}: {detail})", ACCEPTED_AUDIO
        ) from exc
    return data.T, rate  # (channels, samples)


def _decode_ffmpeg(source: Source, family: str, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="imagebind_audio_") as tmp:
        out_path = _ffmpeg_to_wav(source, family, max_duration_s, Path(tmp))
        return _read_ffmpeg_output(source, out_path, max_duration_s)


def _ffmpeg_to_wav(source: Source, family: str, max_duration_s: float | None, tmp: Path) -> Path:
    """Decode the file with ffmpeg into ``tmp/decoded.wav`` (32-bit float PCM); its path."""
    exe = find_ffmpeg()
    if exe is None:
        raise source.error(
            f"decoding {_FORMAT_NAMES[family]} audio needs the ffmpeg program, which was not found "
            "(install ffmpeg so that it is on PATH, or `pip install imageio-ffmpeg`)",
            f"without ffmpeg: {SOUNDFILE_FORMATS_TEXT} files, or (waveform, sample_rate)",
        )
    if source.path is not None:
        in_path = Path(source.path).resolve()
    else:
        in_path = tmp / f"input{source.suffix or '.' + family}"
        in_path.write_bytes(source.data)  # type: ignore[arg-type]
    out_path = tmp / "decoded.wav"
    cmd = [
        exe,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        f"file:{in_path}",
        "-map",
        "0:a:0",
        "-vn",
        "-c:a",
        "pcm_f32le",
    ]
    if max_duration_s is not None:
        # Decode a little more than the limit so that "too long" can still be detected.
        cmd += ["-t", f"{max_duration_s + 1:g}"]
    cmd += ["-f", "wav", "-y", f"file:{out_path}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise source.error(
            f"ffmpeg did not finish decoding within {FFMPEG_TIMEOUT_S} s", ACCEPTED_AUDIO
        ) from None
    except OSError as exc:
        raise source.error(f"ffmpeg ({exe}) could not be run: {exc}", ACCEPTED_AUDIO) from exc
    if proc.returncode != 0 or not out_path.exists():
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {proc.returncode}"
        if "matches no streams" in " ".join(message):
            detail = "the file has no audio stream"
        raise source.error(
            f"the file could not be decoded as {_FORMAT_NAMES[family]} by ffmpeg ({detail})",
            ACCEPTED_AUDIO,
        )
    return out_path


def _read_ffmpeg_output(
    source: Source, out_path: Path, max_duration_s: float | None
) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(str(out_path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise source.error(f"ffmpeg produced unreadable output ({exc})", ACCEPTED_AUDIO) from exc
    _check_decoded(source.name, data.shape[0], int(rate), max_duration_s)
    return data.T, int(rate)


# --------------------------------------------------------------------------------------------
# Long files: reading only the samples around the clips


class _Irregular(Exception):
    """The windowed reading met something the whole-file path must judge (it is used instead)."""


#: Containers and sample encodings that are read around the clips: uncompressed or lossless and
#: stateless, so a seek gives exactly the samples a whole-file read gives.
_WINDOWED_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC"})
_WINDOWED_SUBTYPES = frozenset(
    {"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"}
)
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
_SCAN_BLOCK_FRAMES = 1 << 18


def _load_windowed(source: Source, label: str, options: AudioOptions) -> torch.Tensor | None:
    """:func:`load_audio` of a WAV or FLAC file (or ffmpeg's decoded output) that reads only the
    samples around the clips (:func:`_clips_from_reader`) instead of decoding the whole file:
    the same tensor, bit for bit. None when the whole-file path must run instead: the audio is
    short (the clips cover much of it), or anything about the file is unusual (an encoding that
    is not seekable exactly, a sample rate or length the whole-file path refuses, a short read)
    or may be refused (NaN samples, a channel 0 that is constant in every sample read), so that
    refusals and their messages stay those of the whole-file path.

    Checks equal to the whole-file path's: a float file is scanned block by block for NaN and
    infinite samples (all channels, as :func:`_check_samples` does); integer encodings cannot
    hold them. Channel 0 is silent only if constant everywhere, so varying samples among those
    read prove it is not."""
    try:
        with source.open() as raw, sf.SoundFile(raw) as snd:
            if snd.format not in _WINDOWED_FORMATS or snd.subtype not in _WINDOWED_SUBTYPES:
                return None
            if not snd.seekable():
                return None
            frames, rate = int(snd.frames), int(snd.samplerate)
            if frames < 1 or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                return None
            if options.max_duration_s is not None and frames / rate > options.max_duration_s:
                return None
            if options.clips_per_video * options.clip_duration * 2 > frames / rate:
                return None  # short audio: the clips cover much of it
            snd.seek(frames - 1)  # the header's length is really there (a truncated file is not)
            if snd.read(1, dtype="float32", always_2d=True).shape[0] != 1:
                return None
            if snd.subtype in _FLOAT_SUBTYPES:
                snd.seek(0)
                for block in snd.blocks(_SCAN_BLOCK_FRAMES, dtype="float32", always_2d=True):
                    if not np.isfinite(block).all():
                        return None
            rows = slice(None) if options.mode == "official" else slice(0, 1)
            first_value: list[float] = []
            varies = False

            def read(lo: int, hi: int) -> torch.Tensor:
                nonlocal varies
                snd.seek(lo)
                data = snd.read(hi - lo, dtype="float32", always_2d=True)
                if data.shape[0] != hi - lo:
                    raise _Irregular
                if data.shape[0]:
                    channel0 = data[:, 0]
                    if not first_value:
                        first_value.append(float(channel0[0]))
                    varies = varies or bool((channel0 != first_value[0]).any())
                return torch.from_numpy(np.ascontiguousarray(data.T[rows]))

            clips = _clips_from_reader(read, frames, rate, options, label)
    except (_Irregular, sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError):
        return None
    if clips is None or not varies:
        return None
    return clips


def decode_audio(
    audio: FileInput,
    *,
    name: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_duration_s: float | None = AudioOptions.max_duration_s,
) -> tuple[torch.Tensor, int]:
    """Decode a file to ``(waveform, sample_rate)``: float32 (channels, samples), values as
    ``torchaudio.load`` gives them (PCM scaled by 1 / 2**(bits - 1)).

    ``name`` names bytes in messages and gives their extension (e.g. ``name="clip.flac"``).
    Checks the file (size, format, decodability) but not the samples; :func:`load_audio` does.
    """
    source = as_source(audio, name=name, max_bytes=max_bytes, accepted=ACCEPTED_AUDIO)
    return _decode_source(source, _detect_format(source), max_duration_s)


def _decode_source(source: Source, family: str, max_duration_s: float | None) -> tuple[torch.Tensor, int]:
    if family in _FFMPEG_FAMILIES:
        data, rate = _decode_ffmpeg(source, family, max_duration_s)
    else:
        data, rate = _decode_soundfile(source, family, max_duration_s)
    return _decoded_tensor(source, data, rate)


def _decoded_tensor(source: Source, data: np.ndarray, rate: int) -> tuple[torch.Tensor, int]:
    if data.shape[1] == 0:
        raise source.error("the file contains no audio samples (zero length)", ACCEPTED_AUDIO)
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), rate


# --------------------------------------------------------------------------------------------
# In-memory waveforms


def _check_sample_rate(label: str, rate: Any) -> int:
    accepted = f"an integer sample rate in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise InputError(label, f"invalid sample rate {rate!r} (not a number)", accepted)
    if not math.isfinite(float(rate)) or float(rate) != int(rate):
        raise InputError(label, f"invalid sample rate {rate!r} (not a whole number of Hz)", accepted)
    rate = int(rate)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(label, f"invalid sample rate {rate} Hz", accepted)
    return rate


def _waveform_from_array(label: str, array: Any) -> torch.Tensor:
    accepted = (
        "a float numpy array or CPU torch tensor of shape (samples,) or (channels, samples), "
        "values in [-1, 1]"
    )
    if torch.is_tensor(array):
        if array.device.type != "cpu":
            raise InputError(
                label, f"the waveform tensor is on {array.device}; move it to the CPU first", accepted
            )
        if not array.is_floating_point():
            raise InputError(
                label,
                f"waveform dtype {array.dtype} is not floating point "
                "(convert integer PCM to float, e.g. x / 32768 for int16)",
                accepted,
            )
        tensor = array.detach().to(dtype=torch.float32, copy=True)
    elif isinstance(array, np.ndarray):
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(
                label,
                f"waveform dtype {array.dtype} is not floating point "
                "(convert integer PCM to float, e.g. x / 32768 for int16)",
                accepted,
            )
        tensor = torch.tensor(np.asarray(array, dtype=np.float32))
    else:
        raise InputError(label, f"the waveform is a {type(array).__name__}, not an array", accepted)

    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    elif tensor.dim() != 2:
        raise InputError(
            label, f"waveform of shape {tuple(tensor.shape)} has {tensor.dim()} dimensions", accepted
        )
    channels, samples = tensor.shape
    if channels == 0 or samples == 0:
        raise InputError(label, f"the waveform is empty (shape {tuple(tensor.shape)}, zero length)", accepted)
    if channels > samples:
        raise InputError(
            label,
            f"waveform of shape {tuple(tensor.shape)} has more channels than samples: it looks like "
            "(samples, channels), the soundfile layout; pass waveform.T",
            accepted,
        )
    return tensor.contiguous()


# --------------------------------------------------------------------------------------------
# Clips and features


def clip_sample_ranges(num_samples: int, options: AudioOptions = AudioOptions()) -> list[tuple[int, int]]:
    """Sample ranges ``[start, stop)`` of the clips at ``options.sample_rate``.

    pytorchvideo's ConstantClipsPerVideoSampler: ``step = max(D - c, 0) / n`` in exact
    fractions and clip i = [i * step, i * step + c), cut as ``int(t * rate)``. ``stop`` may
    exceed ``num_samples`` for audio shorter than a clip (slicing then takes what is there).
    Official mode: n = N (pytorchvideo 0.1.5, so the last clip stops short of the end), D the
    float ``num_samples / rate`` and ``D - c`` a float subtraction, as in the official code.
    Corrected mode: n = N - 1 (pytorchvideo's later fix: the last clip ends at the end of the
    file) and the exact ``Fraction(num_samples, rate)``; the video loader does the same.
    """
    rate = options.sample_rate
    clip = Fraction(options.clip_duration)
    if options.mode == "official":
        duration = num_samples / rate
        max_start = Fraction(max(duration - float(clip), 0))
    else:
        max_start = max(Fraction(num_samples, rate) - clip, Fraction(0))
    divisor = options.clips_per_video if options.mode == "official" else max(options.clips_per_video - 1, 1)
    step = max_start / divisor
    ranges = []
    for i in range(options.clips_per_video):
        start = step * i
        ranges.append((int(start * rate), int((start + clip) * rate)))
    return ranges


def _melspec(clip_channel0: torch.Tensor, options: AudioOptions, label: str) -> torch.Tensor:
    """(samples,) zero-mean clip -> normalised (1, mel, target_length)."""
    fb = kaldi_fbank(clip_channel0, options.fbank_options).transpose(0, 1)  # (mel, frames)
    frames = fb.shape[1]
    gap = options.target_length - frames
    if abs(gap) / frames > 0.2:
        logger.info("%s: clip has %d frames, padded/cropped to %d", label, frames, options.target_length)
    if gap > 0:
        fb = torch.nn.functional.pad(fb, (0, gap), mode="constant", value=0.0)
    elif gap < 0:
        fb = fb[:, : options.target_length]
    mean = torch.tensor(options.mean, dtype=fb.dtype)
    std = torch.tensor(options.std, dtype=fb.dtype)
    return ((fb - mean) / std).unsqueeze(0)


def waveform_to_clips(
    waveform: torch.Tensor,
    sample_rate: int,
    options: AudioOptions | None = None,
    *,
    name: str = "<waveform>",
    windowed: bool = True,
) -> torch.Tensor:
    """Steps 2-5 of the pipeline on a checked float32 (channels, samples) waveform.

    Returns (clips, 1, num_mel_bins, target_length). The input tensor is not modified. When
    the clips are a small part of the waveform (long audio), only the samples around them are
    resampled (``windowed=False``: the whole waveform is, as the official code does); the
    result is the same, bit for bit (see :func:`_clips_from_reader`).
    """
    options = _resolve_options(options, None)
    if not (torch.is_tensor(waveform) and waveform.dim() == 2 and waveform.dtype == torch.float32):
        raise TypeError("waveform_to_clips expects a float32 tensor of shape (channels, samples)")
    # Official: every channel is resampled (all of them enter the clip mean). Corrected: only
    # channel 0 is ever used.
    source = waveform if options.mode == "official" else waveform[:1]
    clips = None
    if windowed:
        clips = _clips_from_reader(
            lambda lo, hi: source[:, lo:hi], source.shape[1], int(sample_rate), options, name
        )
    if clips is not None:
        return clips
    signal = resample(source, int(sample_rate), options.sample_rate)
    # The official loader subtracts each clip's mean in place on a view of the shared waveform;
    # do exactly that, on a private copy (resample() already returned a new tensor unless the
    # rate was right).
    shared = signal.clone() if signal is source and options.mode == "official" else signal
    return _clips_of_segments([(0, shared)], signal.shape[1], options, name)


#: Long audio is read and resampled only around its clips when the samples needed are at most
#: this fraction of the whole (else the whole waveform is resampled at once).
WINDOWED_MAX_FRACTION = 0.5


def _too_short(name: str, num_samples: int, options: AudioOptions) -> InputError:
    return InputError(
        name,
        f"the audio is too short ({num_samples} samples at {options.sample_rate} Hz; at least "
        f"{options.fbank_options.window_size} samples = {options.frame_length_ms:g} ms are needed "
        "for one frame)",
        f"audio of at least {options.frame_length_ms:g} ms",
    )


def _clip_segments(num_samples: int, options: AudioOptions) -> list[tuple[int, int]]:
    """The clips' sample ranges at the target rate, cut to the signal and merged where they
    overlap (ascending)."""
    segments: list[list[int]] = []
    for start, stop in sorted(clip_sample_ranges(num_samples, options)):
        stop = min(stop, num_samples)
        if segments and start < segments[-1][1]:
            segments[-1][1] = max(segments[-1][1], stop)
        else:
            segments.append([start, stop])
    return [(a, b) for a, b in segments]


def _clips_from_reader(read, length: int, rate: int, options: AudioOptions, name: str) -> torch.Tensor | None:
    """The clips of a signal of ``length`` samples at ``rate`` Hz that is read in parts:
    ``read(lo, hi)`` returns its samples ``[lo, hi)`` as float32 ``(channels, hi - lo)`` (the
    channels :func:`waveform_to_clips` resamples: all in official mode, channel 0 in corrected
    mode). Only the samples around the clips are read and resampled
    (:func:`~.resample.resample_range`, bit for bit the slices of the whole resampled signal),
    so the result equals :func:`waveform_to_clips` on the whole waveform.

    Returns None, having read nothing, when that would not save much: the samples needed are
    more than :data:`WINDOWED_MAX_FRACTION` of the signal (short audio), or the rates need the
    banded resampler; or when the signal is too short for one frame (the caller's full path
    reports it)."""
    if length < 1:
        return None
    num_samples = resampled_length(length, rate, options.sample_rate)
    if num_samples < options.fbank_options.window_size:
        return None
    segments = _clip_segments(num_samples, options)
    windows = []
    for start, stop in segments:
        if rate == options.sample_rate:
            windows.append((start, stop))
            continue
        window = resample_window_input(start, stop, length, rate, options.sample_rate)
        if window is None:
            return None
        windows.append(window)
    if sum(hi - lo for lo, hi in windows) > WINDOWED_MAX_FRACTION * length:
        return None
    parts = [(start, resample_range(read, length, rate, options.sample_rate, start, stop))
             for start, stop in segments]
    return _clips_of_segments(parts, num_samples, options, name)


def _clips_of_segments(parts: list[tuple[int, torch.Tensor]], num_samples: int, options: AudioOptions,
                       name: str) -> torch.Tensor:
    """Steps 3-5 on the resampled signal given as parts ``(first sample, samples)`` that hold
    every clip (overlapping clips in one part). Official mode subtracts the means in place on
    the parts (which must be private tensors)."""
    if num_samples < options.fbank_options.window_size:
        raise _too_short(name, num_samples, options)
    clips = []
    for start, stop in clip_sample_ranges(num_samples, options):
        stop = min(stop, num_samples)
        first, part = next((a, t) for a, t in parts if a <= start and stop <= a + t.shape[1])
        if options.mode == "official":
            view = part[:, start - first:stop - first]
            view -= view.contiguous().mean()  # the same memory layout in the windowed and whole paths
            clips.append(_melspec(view[0], options, name))
        else:
            clip = part[0, start - first:stop - first].clone()
            clip = clip - clip.mean()
            clips.append(_melspec(clip, options, name))
    return torch.stack(clips, dim=0).contiguous()


# --------------------------------------------------------------------------------------------
# Public entry points


def _is_waveform_tuple(audio: Any) -> bool:
    return isinstance(audio, tuple)


def _waveform_input(audio: tuple, label: str) -> tuple[torch.Tensor, int]:
    if len(audio) != 2:
        raise InputError(label, f"a tuple of {len(audio)} items", "(waveform, sample_rate)")
    array, rate = audio
    if not (torch.is_tensor(array) or isinstance(array, np.ndarray)) and (
        torch.is_tensor(rate) or isinstance(rate, np.ndarray)
    ):
        raise InputError(
            label,
            "the tuple is (sample_rate, waveform); the order is (waveform, sample_rate)",
            "(waveform, sample_rate)",
        )
    rate = _check_sample_rate(label, rate)
    return _waveform_from_array(label, array), rate


def load_audio(
    audio: AudioInput,
    options: AudioOptions | None = None,
    *,
    mode: str | None = None,
    name: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Preprocess one audio input for ImageBind: float32 (clips, 1, mel bins, frames),
    (3, 1, 128, 204) with the default options.

    Args:
        audio: a path, ``bytes``, a binary file object, or ``(waveform, sample_rate)`` with a
            float numpy array / CPU tensor of shape (samples,) or (channels, samples).
        options: :class:`AudioOptions` (ImageBind's defaults, corrected mode, if None).
        mode: shortcut that overrides ``options.mode`` ("official" or "corrected").
        name: how the input is called in error messages; for bytes also their file name
            (its extension decides the format).
        max_bytes: refuse files larger than this (None: no limit).

    Raises:
        InputError: for any unusable input (see the module doc).
    """
    options = _resolve_options(options, mode)
    if _is_waveform_tuple(audio):
        label = name or "<waveform>"
        waveform, rate = _waveform_input(audio, label)
        _check_decoded(label, waveform.shape[1], rate, options.max_duration_s)
    elif torch.is_tensor(audio) or isinstance(audio, np.ndarray):
        raise InputError(
            name or "<waveform>", "a bare array has no sample rate", "(waveform, sample_rate), or a file"
        )
    else:
        source = as_source(audio, name=name, max_bytes=max_bytes, accepted=ACCEPTED_AUDIO)
        family = _detect_format(source)
        label = name or _source_label(audio)
        if family in _FFMPEG_FAMILIES:
            with tempfile.TemporaryDirectory(prefix="imagebind_audio_") as tmp:
                decoded = _ffmpeg_to_wav(source, family, options.max_duration_s, Path(tmp))
                clips = _load_windowed(Source(name=source.name, suffix=".wav", path=decoded), label, options)
                if clips is not None:
                    return clips
                waveform, rate = _decoded_tensor(source, *_read_ffmpeg_output(source, decoded,
                                                                               options.max_duration_s))
        else:
            clips = _load_windowed(source, label, options) if family in ("wav", "flac") else None
            if clips is not None:
                return clips
            waveform, rate = _decode_source(source, family, options.max_duration_s)
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise InputError(
                label,
                f"unsupported sample rate {rate} Hz in the file",
                f"sample rates in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz",
            )
    _check_samples(label, waveform, options)
    return waveform_to_clips(waveform, rate, options, name=label)


def _source_label(audio: Any) -> str:
    if isinstance(audio, (str, os.PathLike)):
        return Path(audio).name or str(audio)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return os.path.basename(str(getattr(audio, "name", "") or "")) or "<file object>"


def _check_samples(label: str, waveform: torch.Tensor, options: AudioOptions) -> None:
    # numpy's isfinite is about 10x faster than torch's on long float32 audio (same answer)
    if not bool(np.isfinite(waveform.numpy()).all()):
        bad = int((~torch.isfinite(waveform)).sum())
        raise InputError(
            label, f"the audio contains {bad} NaN or infinite sample(s)", "finite float samples in [-1, 1]"
        )
    channel0 = waveform[0]
    if not options.allow_silent and bool((channel0 == channel0[0]).all()):
        value = float(channel0[0])
        what = "all samples are 0" if value == 0.0 else f"all samples equal {value:g}"
        others = ""
        if waveform.shape[0] > 1 and bool((waveform[1:] != waveform[1:, :1]).any()):
            others = (
                "; the other channels are not silent, but ImageBind only uses channel 0 (left): "
                "pass the channel you want as a mono (waveform, sample_rate)"
            )
        raise InputError(
            label,
            f"the audio is silent: channel 0 is constant ({what}), so its log-mel spectrogram is "
            f"constant and carries no information{others}",
            "audio with sound on channel 0 (or AudioOptions(allow_silent=True))",
        )


def load_audio_batch(
    audios: Sequence[AudioInput],
    options: AudioOptions | None = None,
    *,
    mode: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """:func:`load_audio` on every item of a list, stacked: (B, clips, 1, mel bins, frames).

    An error names the failing item by its index, e.g. ``"audio 2 (song.mp3): ..."``.
    """
    options = _resolve_options(options, mode)
    return torch.stack(load_each(audios, lambda a: load_audio(a, options, max_bytes=max_bytes), "audio",
                                 ACCEPTED_AUDIO))
