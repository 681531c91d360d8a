"""Audio preprocessing: golden parity (official mode), the two DSP ports, the official vs
corrected difference, every accepted input form and every refused input.

Test media are generated in tmp_path with soundfile; golden media are found through the
manifest (their names differ between golden sets)."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf
import torch

from imagebind_llm.errors import InputError
from imagebind_llm.preprocess import audio as audio_mod
from imagebind_llm.preprocess import resample as resample_mod
from imagebind_llm.preprocess.audio import (
    AudioOptions,
    clip_sample_ranges,
    decode_audio,
    load_audio,
    load_audio_batch,
    waveform_to_clips,
)
from imagebind_llm.preprocess.fbank import FbankOptions, kaldi_fbank, mel_banks
from imagebind_llm.preprocess.resample import resample, resampled_length, sinc_resample_kernel

SR = 16000


# --------------------------------------------------------------------------------------------
# helpers


def tone(seconds: float, rate: int = SR, freq: float = 440.0, channels: int = 1, dc=0.0, seed: int = 0):
    """(samples, channels) float32: a tone plus a little noise, channel c at freq * (c + 1)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    cols = []
    for c in range(channels):
        x = 0.3 * np.sin(2 * np.pi * freq * (c + 1) * t) + 0.02 * rng.standard_normal(n)
        offset = dc[c] if isinstance(dc, (list, tuple)) else dc
        cols.append(x + offset)
    return np.stack(cols, axis=1).astype(np.float32)


def write(path, data, rate=SR, **kw):
    sf.write(str(path), data, rate, **kw)
    return path


def wav_bytes(data, rate=SR, fmt="WAV", subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def raises_input_error(fn, *must_contain):
    with pytest.raises(InputError) as info:
        fn()
    message = str(info.value)
    for text in must_contain:
        assert text.lower() in message.lower(), f"{text!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------------------------
# golden parity


def _audio_entries(manifest):
    entries = [e for e in manifest if e.get("modality") == "audio"]
    assert entries, "the golden manifest has no audio entries"
    return entries


def _tolerance(entry) -> float:
    src = entry.get("source_audio", {})
    fmt = str(src.get("format", "")).upper()
    if fmt not in ("WAV", "FLAC"):
        return 5e-3  # lossy decoders (MP3) differ slightly between libraries
    return 1e-4 if int(src.get("sample_rate", SR)) == SR else 2e-3


def _options(entry, mode="official") -> AudioOptions:
    keys = ("sample_rate", "num_mel_bins", "target_length", "clip_duration", "clips_per_video", "mean", "std")
    used = entry.get("defaults_used", {})
    return AudioOptions(**{k: used[k] for k in keys if k in used}, mode=mode)


def test_golden_official_mode_matches(golden, preprocess_manifest):
    report, failures = [], []
    for entry in _audio_entries(preprocess_manifest):
        expected = torch.load(golden / "preprocess" / entry["expected"], map_location="cpu")
        got = load_audio(golden / "preprocess" / entry["file"], _options(entry)).unsqueeze(0)
        assert list(got.shape) == list(expected.shape) == entry["shape"], entry["file"]
        assert got.dtype == torch.float32
        diff = float((got.double() - expected.double()).abs().max())
        tol = _tolerance(entry)
        report.append(f"{entry['file']}: {diff:.3e} (limit {tol:g})")
        if not diff <= tol:
            failures.append(report[-1])
    print("\n".join(report))
    assert not failures, "official mode differs from the golden tensors:\n" + "\n".join(failures)


def test_golden_inputs_forms_agree(golden, preprocess_manifest):
    """bytes (no name: format sniffed), file objects and (waveform, sr) give the path's tensor."""
    for entry in _audio_entries(preprocess_manifest):
        path = golden / "preprocess" / entry["file"]
        options = _options(entry)
        ref = load_audio(path, options)
        data = path.read_bytes()
        assert torch.equal(load_audio(data, options), ref), entry["file"]
        with open(path, "rb") as f:
            assert torch.equal(load_audio(f, options), ref), entry["file"]
        waveform, rate = decode_audio(path)
        assert torch.equal(load_audio((waveform.numpy(), rate), options), ref), entry["file"]
        assert torch.equal(load_audio((waveform, rate), options), ref), entry["file"]


def test_golden_corrected_mode_runs(golden, preprocess_manifest):
    for entry in _audio_entries(preprocess_manifest):
        out = load_audio(golden / "preprocess" / entry["file"], _options(entry, mode="corrected"))
        assert tuple(out.shape) == _options(entry).output_shape
        assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# resampler


def _reference_kernel_f64(orig: int, new: int, zero_crossings: int = 6, rolloff: float = 0.99):
    """The windowed-sinc filter bank straight from its definition, in float64 numpy."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / base)
    d = np.arange(-width, width + orig)[None, :] / orig - np.arange(new)[:, None] / new
    x = np.clip(base * d, -zero_crossings, zero_crossings)
    window = np.cos(np.pi * x / (2 * zero_crossings)) ** 2
    return (base / orig) * np.sinc(x) * window, width


@pytest.mark.parametrize("orig,new", [(44100, 16000), (22050, 16000), (8000, 16000), (16000, 44100)])
def test_resample_kernel_matches_definition(orig, new):
    kernel, width = sinc_resample_kernel(orig, new)
    ref, ref_width = _reference_kernel_f64(orig, new)
    assert width == ref_width
    assert kernel.shape == (ref.shape[0], 1, ref.shape[1])
    assert np.abs(kernel[:, 0].double().numpy() - ref).max() < 2e-5  # float32 evaluation


@pytest.mark.parametrize(
    "orig,new,freq",
    [
        (44100, 16000, 440.0),
        (22050, 16000, 1000.0),
        (8000, 16000, 300.0),
        (48000, 16000, 3000.0),
        (16000, 44100, 440.0),
    ],
)
def test_resample_keeps_a_low_frequency_sine(orig, new, freq):
    n = orig  # one second
    x = (0.5 * torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / orig)).float()
    y = resample(x, orig, new)
    assert y.shape == (new,) == (resampled_length(n, orig, new),)
    expected = 0.5 * torch.sin(2 * math.pi * freq * torch.arange(y.shape[0], dtype=torch.float64) / new)
    edge = new // 20  # the zero padding at both ends disturbs the first/last few filter widths
    assert (y.double() - expected)[edge:-edge].abs().max() < 1e-3


def test_resample_shapes_batch_and_identity():
    x = torch.randn(2, 3, 4410)
    y = resample(x, 44100, 16000)
    assert y.shape == (2, 3, 1600)
    assert torch.allclose(y[1, 2], resample(x[1, 2], 44100, 16000), atol=1e-6)
    assert resample(x, 16000, 16000) is x
    # ceil(new * n / orig) with reduced rates
    assert resampled_length(55125, 22050, 16000) == 40000
    assert resampled_length(5600, 8000, 16000) == 11200
    assert resampled_length(101, 44100, 16000) == math.ceil(101 * 160 / 441)
    with pytest.raises(TypeError):
        resample(torch.arange(10), 8000, 16000)
    with pytest.raises(ValueError):
        resample(x, 0, 16000)
    with pytest.raises(ValueError):
        resample(x, 22050.5, 16000)


def test_resample_banded_path_matches_convolution(monkeypatch):
    x = torch.randn(2, 2 * 22050 + 7)
    full = resample(x, 22050, 16000)
    monkeypatch.setattr(resample_mod, "MAX_KERNEL_ELEMENTS", 16)
    banded = resample(x, 22050, 16000)
    assert banded.shape == full.shape
    assert (banded - full).abs().max() < 1e-5


def test_resample_nearly_coprime_rates_are_cheap():
    y = resample(torch.randn(44099), 44099, 16000)  # a 16000 x 44117 filter bank if built
    assert y.shape == (16000,)
    assert torch.isfinite(y).all()


# --------------------------------------------------------------------------------------------
# filterbank


def _reference_fbank_f64(x: np.ndarray, num_bins=128, rate=SR, low=20.0):
    """Kaldi fbank (ImageBind's options) written out in float64 numpy, independently."""
    size, shift, nfft = 400, 160, 512
    m = 1 + (len(x) - size) // shift
    frames = np.stack([x[i * shift : i * shift + size] for i in range(m)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * prev
    frames *= 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))
    power = np.abs(np.fft.rfft(frames, n=nfft)) ** 2

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(low), mel(rate / 2)
    delta = (hi - lo) / (num_bins + 1)
    fft_mel = mel(np.arange(nfft // 2) * rate / nfft)
    bank = np.zeros((num_bins, nfft // 2 + 1))
    for b in range(num_bins):
        left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        up = (fft_mel - left) / (centre - left)
        down = (right - fft_mel) / (right - centre)
        bank[b, : nfft // 2] = np.maximum(0.0, np.minimum(up, down))
    return np.log(np.maximum(power @ bank.T, np.finfo(np.float32).eps))


def test_fbank_matches_independent_float64_reference():
    x = tone(0.5)[:, 0]
    got = kaldi_fbank(torch.from_numpy(x))
    ref = _reference_fbank_f64(x)
    assert got.shape == ref.shape == (1 + (len(x) - 400) // 160, 128)
    assert np.abs(got.double().numpy() - ref).max() < 2e-3


def test_fbank_frame_count_and_sizes():
    opts = FbankOptions()
    assert (opts.window_size, opts.window_shift, opts.padded_window_size) == (400, 160, 512)
    assert opts.num_frames(2 * SR) == 198
    assert opts.num_frames(399) == 0
    out = kaldi_fbank(torch.randn(2 * SR) * 0.1)
    assert out.shape == (198, 128) and out.dtype == torch.float32
    # (channels, samples): channel 0 only
    stereo = torch.stack([torch.randn(4000), torch.zeros(4000)])
    assert torch.equal(kaldi_fbank(stereo), kaldi_fbank(stereo[0].clone()))
    banks = mel_banks()
    assert banks.shape == (128, 257) and torch.all(banks[:, -1] == 0)
    with pytest.raises(ValueError):
        kaldi_fbank(torch.randn(399))


def _mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


def test_fbank_tone_peaks_in_the_right_mel_bin():
    freq = 1000.0
    t = torch.arange(SR, dtype=torch.float64) / SR
    out = kaldi_fbank((0.5 * torch.sin(2 * math.pi * freq * t)).float())
    peak = int(out.mean(0).argmax())
    step = (_mel(8000.0) - _mel(20.0)) / 129
    centres = [_mel(20.0) + (b + 1) * step for b in range(128)]
    nearest = min(range(128), key=lambda b: abs(centres[b] - _mel(freq)))
    assert abs(peak - nearest) <= 1


def test_fbank_options_are_validated():
    for bad in (
        dict(window_type="povey"),
        dict(dither=1.0),
        dict(use_energy=True),
        dict(snip_edges=False),
        dict(num_mel_bins=3),
        dict(low_freq=9000.0),
        dict(frame_shift_ms=0.01),
    ):
        with pytest.raises(ValueError):
            FbankOptions(**bad)


# --------------------------------------------------------------------------------------------
# clip positions


def test_clip_ranges_follow_the_sampler_formula():
    official, corrected = AudioOptions(mode="official"), AudioOptions(mode="corrected")
    # Official: step = (D - 2) / 3, the last clip stops short of the end.
    assert clip_sample_ranges(3 * SR, official) == [(0, 32000), (5333, 37333), (10666, 42666)]
    assert clip_sample_ranges(8 * SR, official) == [(0, 32000), (32000, 64000), (64000, 96000)]
    # Corrected: step = (D - 2) / 2, the last clip ends at the end of the file.
    assert clip_sample_ranges(3 * SR, corrected) == [(0, 32000), (8000, 40000), (16000, 48000)]
    assert clip_sample_ranges(8 * SR, corrected) == [(0, 32000), (48000, 80000), (96000, 128000)]
    for opts in (official, corrected):
        assert clip_sample_ranges(SR // 2, opts) == [(0, 32000)] * 3  # short: 3 clips of the whole file
        assert clip_sample_ranges(2 * SR, opts) == [(0, 32000)] * 3
    # The official code subtracts in float (D - 2.0); the corrected mode is exact.
    n = 32096  # exact corrected step: 96 / 2 = 48 samples
    assert clip_sample_ranges(n, corrected) == [(0, 32000), (48, 32048), (96, 32096)]
    assert clip_sample_ranges(n, official) == [(0, 32000), (31, 32031), (63, 32063)]
    # Fraction arithmetic, checked from the definition
    n = 44123
    step = (Fraction(n, SR) - 2) / 2
    assert clip_sample_ranges(n, corrected) == [
        (int(i * step * SR), int((i * step + 2) * SR)) for i in range(3)
    ]


# --------------------------------------------------------------------------------------------
# official vs corrected


def test_corrected_clips_equal_official_on_each_clip_alone():
    """The corrected mode only moves the clips and removes each clip's own mean: every clip
    equals the official first clip of that 2 s excerpt on its own (no overlap there)."""
    data = tone(8.5, dc=0.1)[:, 0]
    corrected = load_audio((data, SR), mode="corrected")
    for i, (start, stop) in enumerate(clip_sample_ranges(len(data), AudioOptions(mode="corrected"))):
        alone = load_audio((data[start:stop], SR), mode="official")
        assert torch.equal(corrected[i], alone[0])


def _frames_with_step(step_positions, frames=198):
    """Frames (400 samples every 160) that straddle a step between samples s-1 and s."""
    return {k for k in range(frames) for s in step_positions if 160 * k < s < 160 * k + 400}


def test_modes_differ_only_at_the_in_place_steps():
    data = tone(3.0, dc=0.2)[:, 0]  # clips overlap: (0,32000) (5333,37333) (10666,42666)
    official = load_audio((data, SR), mode="official")
    # The same clip positions, each clip processed on its own copy (no in-place interaction).
    ranges = clip_sample_ranges(len(data), AudioOptions(mode="official"))
    copied = torch.stack([load_audio((data[a:b], SR), mode="official")[0] for a, b in ranges])
    diff = (official - copied).abs()[:, 0].amax(dim=1)  # (clips, frames)
    assert diff[0].max() == 0  # the first clip sees untouched samples
    # clip 1 has a step at absolute sample 32000 (end of clip 0's region), clip 2 at 32000 and 37333
    expected = {1: _frames_with_step([32000 - 5333]), 2: _frames_with_step([32000 - 10666, 37333 - 10666])}
    for clip, frames in expected.items():
        changed = {k for k in range(198) if diff[clip, k] > 1e-3}
        assert changed and changed <= frames, (clip, sorted(changed), sorted(frames))
        assert diff[clip, sorted(frames)].max() > 1e-2
        assert diff[clip, 198:].max() == 0  # the zero padding is the same


def test_official_stereo_mean_over_all_channels():
    # Non-overlapping clips; channel 1 has a large DC. Officially its mean is subtracted from
    # channel 0 too: a constant per clip, removed again by Kaldi's per-frame DC removal, so the
    # two modes agree up to float rounding.
    data = tone(8.0, channels=2, dc=[0.0, 0.5])
    official = load_audio((data.T, SR), mode="official")
    corrected = load_audio((data.T, SR), mode="corrected")
    # (clip 0 sits at [0, 2 s) in both modes; the corrected mode moves the later clips)
    assert 0 < (official[0] - corrected[0]).abs().max() < 1e-3
    # overlapping clips + DC on channel 0: the in-place steps make a visible difference
    data = tone(4.0, channels=2, dc=[0.3, -0.1])
    diff = (load_audio((data.T, SR), mode="official") - load_audio((data.T, SR), mode="corrected")).abs()
    assert diff.max() > 1e-2


def test_official_mode_never_modifies_the_callers_waveform():
    data = tone(3.0, channels=2, dc=0.2).T.copy()
    before = data.copy()
    tensor = torch.from_numpy(data.copy())
    load_audio((data, SR), mode="official")
    load_audio((tensor, SR), mode="official")
    assert np.array_equal(data, before)
    assert torch.equal(tensor, torch.from_numpy(before))


def test_waveform_to_clips_default_shape_and_padding_value():
    short = torch.from_numpy(tone(0.7)[:, 0]).unsqueeze(0)
    out = waveform_to_clips(short, SR, AudioOptions())
    assert out.shape == (3, 1, 128, 204)
    frames = FbankOptions().num_frames(short.shape[1])
    pad = torch.tensor((0.0 + 4.268) / 9.138, dtype=torch.float32)
    assert torch.allclose(out[:, :, :, frames:], pad.expand_as(out[:, :, :, frames:]))


# --------------------------------------------------------------------------------------------
# accepted input forms


@pytest.mark.parametrize(
    "ext,kw",
    [
        (".wav", {}),
        (".flac", {}),
        (".ogg", dict(format="OGG", subtype="VORBIS")),
        (".mp3", dict(format="MP3", subtype="MPEG_LAYER_III")),
    ],
)
def test_path_bytes_fileobject_and_array_agree(tmp_path, ext, kw):
    path = write(tmp_path / f"clip{ext}", tone(2.5, rate=22050, channels=2), rate=22050, **kw)
    ref = load_audio(path)
    assert ref.shape == (3, 1, 128, 204) and ref.dtype == torch.float32
    assert torch.equal(load_audio(path.read_bytes()), ref)  # sniffed
    assert torch.equal(load_audio(path.read_bytes(), name=f"x{ext}"), ref)
    assert torch.equal(load_audio(str(path)), ref)
    with open(path, "rb") as f:
        assert torch.equal(load_audio(f), ref)
    waveform, rate = decode_audio(path)
    assert waveform.shape[0] == 2 and rate == 22050
    assert torch.equal(load_audio((waveform.numpy(), rate)), ref)
    assert torch.equal(load_audio((waveform, rate)), ref)
    # soundfile's own reader: identical for lossless files; for MP3, libsndfile's sf.read seeks
    # to the start first, which changes the decoder's output by ~1 ulp
    decoded, rate = sf.read(str(path), dtype="float32", always_2d=True)
    from_sf = load_audio((decoded.T, rate))
    if ext in (".wav", ".flac"):
        assert torch.equal(from_sf, ref)
    else:
        assert (from_sf - ref).abs().max() < 1e-3


def test_pcm16_is_scaled_like_torchaudio(tmp_path):
    ints = np.array([0, 1, -1, 16384, -32768, 32767], dtype=np.int16)
    path = write(tmp_path / "pcm.wav", ints, subtype="PCM_16")
    waveform, rate = decode_audio(path)
    assert rate == SR and waveform.shape == (1, 6) and waveform.dtype == torch.float32
    assert torch.equal(waveform[0], torch.from_numpy(ints.astype(np.float32) / 32768))


def test_mono_forms_and_float64_arrays_agree():
    data = tone(2.0)[:, 0]
    ref = load_audio((data, SR))
    assert torch.equal(load_audio((data[None, :], SR)), ref)
    assert torch.equal(load_audio((data.astype(np.float64), SR)), ref)
    assert torch.equal(load_audio((data, np.int64(SR))), ref)
    assert torch.equal(load_audio((data, float(SR))), ref)


def test_batch_stacks():
    items = [(tone(2.0)[:, 0], SR), (tone(3.0, rate=8000)[:, 0], 8000)]
    out = load_audio_batch(items)
    assert out.shape == (2, 3, 1, 128, 204)
    assert torch.equal(out[1], load_audio(items[1]))
    raises_input_error(lambda: load_audio_batch([]), "empty")
    raises_input_error(lambda: load_audio_batch(tuple(items)), "expected a list")
    silent = (np.zeros(SR, np.float32), SR)
    raises_input_error(lambda: load_audio_batch([items[0], silent]), "audio 1 (<waveform>)", "silent")


def test_m4a_through_ffmpeg(tmp_path):
    exe = audio_mod.find_ffmpeg()
    if exe is None:
        pytest.skip("no ffmpeg available")
    wav = write(tmp_path / "src.wav", tone(2.5, rate=44100), rate=44100)
    m4a = tmp_path / "clip.m4a"
    proc = subprocess.run(
        [exe, "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"this ffmpeg cannot encode AAC: {proc.stderr[-200:]!r}")
    out = load_audio(m4a)
    assert out.shape == (3, 1, 128, 204) and torch.isfinite(out).all()
    assert torch.equal(load_audio(m4a.read_bytes()), out)  # sniffed as MP4
    assert (out - load_audio(wav)).abs().mean() < 0.05  # same sound, lossy codec


def test_m4a_without_ffmpeg_says_what_works(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_mod, "find_ffmpeg", lambda: None)
    path = tmp_path / "voice.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(64))
    raises_input_error(lambda: load_audio(path), "voice.m4a", "ffmpeg", "WAV", "FLAC", "MP3")


# --------------------------------------------------------------------------------------------
# refused inputs


def test_bad_files_raise_input_error_naming_the_file(tmp_path):
    good = wav_bytes(tone(1.0))
    cases = {
        "notes.txt": (good, ["unsupported file type", ".txt"]),
        "mislabelled.flac": (good, ["named '.flac'", "WAV"]),
        "picture.wav": (b"\x89PNG\r\n\x1a\n" + bytes(100), ["PNG image"]),
        "garbage.wav": (b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(50), ["could not be decoded"]),
        "noise.mp3": (bytes(range(7, 250)) * 4, ["could not be decoded"]),
        "empty.wav": (b"", ["empty"]),
        "nosamples.wav": (wav_bytes(np.zeros((0, 1), np.float32)), ["no audio samples"]),
        "silence.wav": (wav_bytes(np.zeros((SR, 1), np.float32)), ["silent", "channel 0"]),
        "tiny.wav": (wav_bytes(tone(0.01)), ["too short"]),
        "nan.wav": (wav_bytes(np.full((SR, 1), np.nan, np.float32), subtype="FLOAT"), ["NaN"]),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        for mode in ("official", "corrected"):
            raises_input_error(lambda p=path, m=mode: load_audio(p, mode=m), name, *expected)
    raises_input_error(lambda: load_audio(tmp_path / "missing.wav"), "missing.wav", "not found")


def test_bad_bytes_and_limits():
    raises_input_error(lambda: load_audio(bytes(range(256))), "<bytes>", "cannot tell the audio format")
    raises_input_error(lambda: load_audio(b"%PDF-1.4 ..."), "not an audio file", "PDF")
    raises_input_error(
        lambda: load_audio(wav_bytes(tone(1.0)), name="up.wav", max_bytes=100), "up.wav", "too large"
    )
    long = wav_bytes(tone(3.0))
    raises_input_error(
        lambda: load_audio(long, AudioOptions(max_duration_s=2.0), name="long.wav"), "long.wav", "too long"
    )
    stereo = tone(1.0, channels=2)
    stereo[:, 0] = 0
    raises_input_error(
        lambda: load_audio(wav_bytes(stereo), name="left_silent.wav"),
        "left_silent.wav",
        "silent",
        "other channels are not silent",
    )
    inf = np.full((SR, 1), 0.1, np.float32)
    inf[5] = np.inf
    raises_input_error(
        lambda: load_audio(wav_bytes(inf, subtype="FLOAT"), name="inf.wav"), "inf.wav", "infinite"
    )


def test_silent_audio_can_be_allowed_explicitly():
    silence = np.zeros(SR, np.float32)
    raises_input_error(lambda: load_audio((silence, SR), mode="official"), "silent")
    out = load_audio((silence, SR), AudioOptions(mode="official", allow_silent=True))
    log_floor = math.log(torch.finfo(torch.float32).eps)
    frames = FbankOptions().num_frames(SR)
    assert torch.allclose(out[..., :frames], torch.tensor((log_floor + 4.268) / 9.138), atol=1e-5)
    constant = np.full(SR, 0.25, np.float32)  # a DC-only signal is just as empty
    raises_input_error(lambda: load_audio((constant, SR)), "silent", "0.25")


def test_bad_waveforms_and_sample_rates():
    ok = tone(1.0)[:, 0]
    bad_arrays = {
        "3 dimensions": np.zeros((1, 2, SR), np.float32),
        "(samples, channels)": tone(1.0, channels=2),
        "zero length": np.zeros((1, 0), np.float32),
        "not floating point": (ok * 32767).astype(np.int16),
        "not an array": ok.tolist(),
    }
    for problem, array in bad_arrays.items():
        raises_input_error(lambda a=array: load_audio((a, SR), name="mic"), "mic", problem)
    raises_input_error(lambda: load_audio(torch.from_numpy(ok)), "no sample rate")
    raises_input_error(lambda: load_audio((SR, ok)), "order is (waveform, sample_rate)")
    raises_input_error(lambda: load_audio((ok, SR, 1)), "(waveform, sample_rate)")
    for rate in (0, -16000, 22050.5, "16000", True, 10, 10_000_000, float("nan")):
        raises_input_error(lambda r=rate: load_audio((ok, r), name="mic"), "mic", "sample rate")


def test_audio_options_are_validated():
    assert AudioOptions().output_shape == (3, 1, 128, 204)
    assert AudioOptions().mode == "corrected"
    for bad in (
        dict(mode="fast"),
        dict(std=0.0),
        dict(sample_rate=0),
        dict(clip_duration=0.01),
        dict(clips_per_video=0),
        dict(num_mel_bins=2),
        dict(target_length=-1),
        dict(mean=float("nan")),
        dict(max_duration_s=0),
        dict(allow_silent="yes"),
        dict(clip_duration=True),
    ):
        with pytest.raises(ValueError):
            AudioOptions(**bad)
    with pytest.raises(ValueError):
        load_audio((tone(1.0)[:, 0], SR), mode="fast")


def test_no_ffmpeg_needed_for_soundfile_formats(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_mod, "find_ffmpeg", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda *_: None)
    path = write(tmp_path / "a.flac", tone(2.0))
    assert load_audio(path).shape == (3, 1, 128, 204)


# --------------------------------------------------------------------------------------------
# long audio: only the samples around the clips are read and resampled, with the same result


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000, 32000])
@pytest.mark.parametrize("channels", [1, 2])
def test_resample_range_equals_slices_of_the_whole(rate, channels):
    x = torch.from_numpy(tone(20.0, rate=rate, channels=channels).T.copy())
    whole = resample(x, rate, SR)
    total = whole.shape[1]
    reads = []

    def read(lo, hi):
        reads.append(hi - lo)
        return x[:, lo:hi]

    for start, stop in ((0, 1), (0, 32000), (total // 2, total // 2 + 32000), (total - 32000, total),
                        (total - 1, total + 50), (12345, 12346)):
        assert torch.equal(resample_mod.resample_range(read, x.shape[1], rate, SR, start, stop),
                           whole[:, start:min(stop, total)]), (start, stop)
        window = resample_mod.resample_window_input(start, stop, x.shape[1], rate, SR)
        assert window is not None and window[1] - window[0] == reads[-1]
    assert max(reads) < x.shape[1] / 2  # windows, never the whole signal
    same = resample_mod.resample_range(read, x.shape[1], SR, SR, 10, 20)  # equal rates: a copy
    assert torch.equal(same, x[:, 10:20]) and same.data_ptr() != x[:, 10:20].data_ptr()


def test_resample_range_resamples_the_whole_signal_where_windows_are_not_exact():
    x = torch.from_numpy(tone(20.0, rate=44100).T.copy())
    reads = []

    def read(lo, hi):
        reads.append((lo, hi))
        return x[:, lo:hi]

    with torch.backends.mkldnn.flags(enabled=False):  # the GEMM path can round by input length
        whole = resample(x, 44100, SR)
        assert not resample_mod.windows_are_exact(44100, SR)
        assert torch.equal(resample_mod.resample_range(read, x.shape[1], 44100, SR, 1000, 2000), whole[:, 1000:2000])
    assert reads == [(0, x.shape[1])]
    short = x[:, :30000]  # shorter than a window
    assert resample_mod.resample_window_input(0, 100, short.shape[1], 44100, SR) is None


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_long_waveform_resamples_only_around_the_clips(mode, monkeypatch):
    data = torch.from_numpy(tone(40.0, rate=44100, channels=2, dc=[0.01, -0.02]).T.copy())
    before = data.clone()
    options = AudioOptions(mode=mode)
    expected = waveform_to_clips(data, 44100, options, windowed=False)
    monkeypatch.setattr(audio_mod, "resample", lambda *a, **k: pytest.fail("the whole waveform was resampled"))
    assert torch.equal(waveform_to_clips(data, 44100, options), expected)
    assert torch.equal(load_audio((data, 44100), options), expected)
    assert torch.equal(data, before)


def _counting_reads(monkeypatch) -> list[int]:
    frames: list[int] = []
    original = sf.SoundFile.read

    def read(self, frames_wanted=-1, *args, **kwargs):
        out = original(self, frames_wanted, *args, **kwargs)
        frames.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", read)
    return frames


@pytest.mark.parametrize("mode", ["official", "corrected"])
@pytest.mark.parametrize("ext,subtype", [(".wav", "PCM_16"), (".wav", "PCM_24"), (".flac", "PCM_16"),
                                         (".wav", "FLOAT")])
def test_long_files_are_read_only_around_the_clips(tmp_path, monkeypatch, mode, ext, subtype):
    rate, seconds = 44100, 40.0
    path = write(tmp_path / f"long{ext}", tone(seconds, rate=rate, channels=2, dc=[0.01, -0.02]), rate=rate,
                 subtype=subtype)
    options = AudioOptions(mode=mode)
    waveform, decoded_rate = decode_audio(path)
    threads = torch.get_num_threads()
    try:  # both paths sum the clip means in the same memory layout: equal at any thread count
        torch.set_num_threads(1 if threads > 1 else 2)
        assert torch.equal(load_audio(path, options), waveform_to_clips(waveform, decoded_rate, options,
                                                                        windowed=False))
    finally:
        torch.set_num_threads(threads)
    expected = waveform_to_clips(waveform, decoded_rate, options, windowed=False)
    frames = _counting_reads(monkeypatch)
    monkeypatch.setattr(audio_mod, "resample", lambda *a, **k: pytest.fail("the whole waveform was resampled"))
    assert torch.equal(load_audio(path, options), expected)
    clip_reads = frames if subtype != "FLOAT" else frames[-3:]  # a float file is first scanned for NaN
    assert 0 < sum(clip_reads) < 0.5 * seconds * rate
    assert torch.equal(load_audio(path.read_bytes(), options), expected)  # sniffed, from memory
    with open(path, "rb") as f:
        assert torch.equal(load_audio(f, options), expected)


def test_long_files_keep_the_refusals_of_the_whole_file_path(tmp_path):
    rate = 44100
    data = tone(40.0, rate=rate, channels=2)
    data[5 * rate + 3, 1] = np.nan  # between the clips, in the channel the filterbank does not use
    path = write(tmp_path / "nan.wav", data, rate=rate, subtype="FLOAT")
    raises_input_error(lambda: load_audio(path), "nan.wav", "NaN")
    silent = tone(40.0, rate=rate, channels=2)
    silent[:, 0] = 0.0
    raises_input_error(lambda: load_audio(write(tmp_path / "silent.wav", silent, rate=rate)), "silent.wav", "silent")
    silent[5 * rate, 0] = 0.25  # one sample outside every clip: not silent, the clips are constant
    path = write(tmp_path / "almost.wav", silent, rate=rate)
    waveform, _ = decode_audio(path)
    assert torch.equal(load_audio(path), waveform_to_clips(waveform, rate, AudioOptions(), windowed=False))
    too_long = AudioOptions(max_duration_s=30.0)
    raises_input_error(lambda: load_audio(write(tmp_path / "long.wav", tone(40.0, rate=rate), rate=rate), too_long),
                       "long.wav", "too long")


def test_long_m4a_reads_ffmpegs_output_around_the_clips(tmp_path, monkeypatch):
    exe = audio_mod.find_ffmpeg()
    if exe is None:
        pytest.skip("no ffmpeg")
    wav = write(tmp_path / "long.wav", tone(30.0, rate=44100, channels=2), rate=44100)
    m4a = tmp_path / "long.m4a"
    subprocess.run([exe, "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    waveform, rate = decode_audio(m4a)
    expected = waveform_to_clips(waveform, rate, AudioOptions(), windowed=False)
    monkeypatch.setattr(audio_mod, "resample", lambda *a, **k: pytest.fail("the whole waveform was resampled"))
    assert torch.equal(load_audio(m4a), expected)


@pytest.mark.parametrize("head, what", [
    (b"\xff\xd8\xff\xe0", "a JPEG image"),
    (b"GIF89a", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1a\x45\xdf\xa3", "a Matroska/WebM file"),
    (b"RIFF\x10\x00\x00\x00AVI LIST", "a RIFF AVI file"),
    (b"RIFF\x10\x00\x00\x00\xc0\xfb\xd3b", "a RIFF file that is not WAVE audio (a damaged WAV?)"),  # no raw bytes
])
def test_other_files_named_as_audio_say_what_they_are(head, what):
    content = head + bytes(100)
    raises_input_error(lambda: load_audio(content, name="song.wav"), "song.wav",
                       f"named '.wav' but its content is {what}")
    raises_input_error(lambda: load_audio(content), "<bytes>", f"not an audio file: the content is {what}")


def test_audio_of_another_format_under_a_wav_name_is_named_in_words():
    raises_input_error(lambda: load_audio(b"ID3\x04\x00" + bytes(100), name="song.wav"), "song.wav",
                       "named '.wav' but its content is ID3-tagged MP3/AAC audio; rename it")
