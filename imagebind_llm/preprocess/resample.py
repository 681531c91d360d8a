"""Band-limited sinc resampling with a Hann window, in plain torch.

This is an independent port of the resampler that ``torchaudio.functional.resample`` uses
with its defaults (``lowpass_filter_width=6``, ``rolloff=0.99``,
``resampling_method="sinc_interp_hann"``), which is what the official ImageBind audio loader
applies to every file that is not at 16 kHz. torchaudio does not install beside the torch this
project uses, and other resamplers (soxr, polyphase FIR) give visibly different spectrograms
(golden README, section 3), so the algorithm is reproduced here.

The method, in words. Both rates are divided by their greatest common divisor, giving ``orig``
input samples for every ``new`` output samples. Output sample ``j`` lies at time ``j / new``
(in units of ``orig`` input samples per period) and is the windowed-sinc interpolation

    y[j] = sum_i x[i] * h(i / orig - j / new)

with the low-pass cut at ``base = min(orig, new) * rolloff`` and the kernel

    h(d) = (base / orig) * sinc(pi * base * d) * cos(pi * base * d / (2 * W)) ** 2,

where ``base * d`` is clamped to ``[-W, W]`` (``W = lowpass_filter_width`` zero crossings on
each side). The ``new`` output phases repeat every ``orig`` input samples, so the filter bank
(``new`` kernels of ``2 * width + orig`` taps, ``width = ceil(W * orig / base)``) is applied
with one strided ``conv1d`` after zero-padding the input by ``width`` on the left and
``width + orig`` on the right. The output keeps ``ceil(new * length / orig)`` samples, that
quotient being rounded to float32 first, as the reference does (it can drop the last sample of
long inputs; reproduced so that clip positions match).

:func:`resample_range` computes some output samples of a long signal from a window of its
input around them (the blocks of the strided convolution that produce them), bit for bit the
same as slicing the whole output; the audio loader uses it to resample only its clips.

The kernel is evaluated in the waveform's dtype (float32 for decoded audio) with the same
sequence of float operations as the reference, so results agree to ~1e-7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["ResampleOptions", "resample", "resample_range", "resample_window_input", "resampled_length",
           "sinc_resample_kernel", "windows_are_exact"]

#: Filter banks with more elements than this are not built: unusual, nearly coprime rate pairs
#: (e.g. 44099 -> 16000 Hz would need 16000 x 44117 taps) use a banded evaluation of the same
#: filters instead. Every common rate pair stays far below it and uses a single convolution.
MAX_KERNEL_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ResampleOptions:
    """Settings of the windowed-sinc filter (the torchaudio defaults)."""

    lowpass_filter_width: int = 6
    rolloff: float = 0.99

    def __post_init__(self):
        if isinstance(self.lowpass_filter_width, bool) or not isinstance(self.lowpass_filter_width, int):
            raise ValueError(f"lowpass_filter_width must be an int, got {self.lowpass_filter_width!r}")
        if self.lowpass_filter_width <= 0:
            raise ValueError(f"lowpass_filter_width must be positive, got {self.lowpass_filter_width}")
        if not (0.0 < float(self.rolloff) <= 1.0):
            raise ValueError(f"rolloff must be in (0, 1], got {self.rolloff!r}")


def _check_rate(rate, what: str) -> int:
    if isinstance(rate, bool) or int(rate) != rate or rate <= 0:
        raise ValueError(f"{what} must be a positive integer number of Hz, got {rate!r}")
    return int(rate)


def _reduced(orig_freq: int, new_freq: int) -> tuple[int, int]:
    g = math.gcd(orig_freq, new_freq)
    return orig_freq // g, new_freq // g


def resampled_length(length: int, orig_freq: int, new_freq: int) -> int:
    """Number of samples ``resample`` returns for ``length`` input samples.

    ``ceil(new * length / orig)`` with the gcd-reduced rates, the quotient rounded to float32
    before the ceiling (the reference converts it to a default-dtype tensor).
    """
    orig_freq = _check_rate(orig_freq, "orig_freq")
    new_freq = _check_rate(new_freq, "new_freq")
    if orig_freq == new_freq:
        return int(length)
    orig, new = _reduced(orig_freq, new_freq)
    quotient = torch.tensor(new * int(length) / orig, dtype=torch.float32)
    return int(torch.ceil(quotient).item())


def _kernel_width(orig: int, new: int, options: ResampleOptions) -> tuple[float, int]:
    base = min(orig, new) * options.rolloff
    return base, math.ceil(options.lowpass_filter_width * orig / base)


def _phase_kernels(orig: int, new: int, options: ResampleOptions, dtype: torch.dtype) -> torch.Tensor:
    """Kernels of all output phases: shape (new, 1, 2 * width + orig)."""
    base, width = _kernel_width(orig, new, options)
    zero_crossings = options.lowpass_filter_width
    # Times in units of the common period (orig input samples = new output samples): tap u of
    # a block sits at (u - width) / orig, output phase j at j / new; arg = base * (tap - phase).
    taps = torch.arange(-width, width + orig, dtype=dtype) / orig
    phase = torch.arange(0, -new, -1, dtype=dtype) / new
    arg = phase[:, None, None] + taps[None, None, :]
    arg *= base
    arg = arg.clamp_(-zero_crossings, zero_crossings)
    hann = torch.cos(arg * math.pi / zero_crossings / 2) ** 2
    arg *= math.pi
    one = torch.ones((), dtype=dtype)
    kernels = torch.where(arg == 0, one, arg.sin() / arg)
    kernels *= hann * (base / orig)
    return kernels


@lru_cache(maxsize=16)
def _cached_kernels(orig: int, new: int, options: ResampleOptions, dtype: torch.dtype) -> torch.Tensor:
    return _phase_kernels(orig, new, options, dtype)


def sinc_resample_kernel(
    orig_freq: int,
    new_freq: int,
    options: ResampleOptions = ResampleOptions(),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, int]:
    """The filter bank for ``orig_freq -> new_freq``: ``(kernels, width)``.

    ``kernels`` has shape (new, 1, 2 * width + orig) with the gcd-reduced rates; row ``j`` is
    the filter of output phase ``j``. A fresh tensor (callers may modify it).
    """
    orig, new = _reduced(_check_rate(orig_freq, "orig_freq"), _check_rate(new_freq, "new_freq"))
    _, width = _kernel_width(orig, new, options)
    return _phase_kernels(orig, new, options, dtype), width


def resample(
    waveform: torch.Tensor,
    orig_freq: int,
    new_freq: int,
    options: ResampleOptions = ResampleOptions(),
) -> torch.Tensor:
    """Resample ``waveform`` (..., time) from ``orig_freq`` to ``new_freq`` Hz.

    Floating-point input only; the result has the input's dtype and leading dims. Equal rates
    return the input tensor itself (as the reference does).
    """
    orig_freq = _check_rate(orig_freq, "orig_freq")
    new_freq = _check_rate(new_freq, "new_freq")
    if not torch.is_tensor(waveform) or not waveform.is_floating_point():
        raise TypeError("resample expects a floating-point torch tensor")
    if waveform.dim() < 1:
        raise ValueError("resample expects a tensor of shape (..., time)")
    if orig_freq == new_freq:
        return waveform

    orig, new = _reduced(orig_freq, new_freq)
    _, width = _kernel_width(orig, new, options)
    lead_shape = waveform.shape[:-1]
    length = waveform.shape[-1]
    signals = waveform.reshape(-1, length)
    padded = F.pad(signals, (width, width + orig))[:, None, :]  # (n, 1, length + 2w + orig)

    taps = 2 * width + orig
    if new * taps > MAX_KERNEL_ELEMENTS:
        out = _banded_resample(padded[:, 0, :], orig, new, options)
    else:
        kernels = _cached_kernels(orig, new, options, waveform.dtype)
        phases = F.conv1d(padded, kernels, stride=orig)  # (n, new, blocks)
        # Interleave: block b, phase j -> output sample b * new + j.
        out = phases.transpose(1, 2).reshape(signals.shape[0], -1)
    out = out[:, : resampled_length(length, orig_freq, new_freq)]
    return out.reshape(*lead_shape, out.shape[-1])


def resample_window_input(
    start: int,
    stop: int,
    length: int,
    orig_freq: int,
    new_freq: int,
    options: ResampleOptions = ResampleOptions(),
    dtype: torch.dtype = torch.float32,
) -> tuple[int, int] | None:
    """The input samples ``[lo, hi)`` that :func:`resample_range` reads to produce the output
    samples ``[start, stop)`` of a signal of ``length`` samples (``0 <= lo <= hi <= length``),
    or None when it would compute the whole signal (see :func:`resample_range`)."""
    window = _window_blocks(start, stop, length, orig_freq, new_freq, options, dtype)
    if window is None:
        return None
    lo, hi, _ = window
    return max(lo, 0), min(hi, length)


#: A window of :func:`resample_range` is at least this many input samples (per channel) long.
#: ``conv1d`` chooses its algorithm by the size of its input (on CPU, oneDNN above about 20k
#: samples of one channel, a GEMM path below) and the two round differently; a window this long
#: and a whole signal at least this long go through the same algorithm (oneDNN), whose output
#: samples do not depend on where the window lies (tests/test_preprocess_audio.py checks it).
WINDOW_MIN_INPUT = 1 << 16


def windows_are_exact(orig_freq: int, new_freq: int, dtype: torch.dtype = torch.float32,
                      options: ResampleOptions = ResampleOptions()) -> bool:
    """Whether :func:`resample_range` may compute windows here: oneDNN convolutions are on
    (with them off, the GEMM path's rounding can depend on the input length) and, checked once
    per rate pair and dtype, windows of a signal 5 windows long, mono and stereo, equal the
    slices of its whole resampled output bit for bit. When False, :func:`resample_range`
    resamples the whole signal (same result, no saving)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    orig, new = _reduced(_check_rate(orig_freq, "orig_freq"), _check_rate(new_freq, "new_freq"))
    return _self_check(orig, new, dtype, options)


@lru_cache(maxsize=32)
def _self_check(orig: int, new: int, dtype: torch.dtype, options: ResampleOptions) -> bool:
    generator = torch.Generator().manual_seed(0)
    length = 5 * WINDOW_MIN_INPUT + 7 * orig + 13
    for channels in (1, 2):
        signal = (torch.rand(channels, length, generator=generator, dtype=torch.float64) - 0.5).to(dtype)
        whole = resample(signal, orig, new, options)
        total = whole.shape[1]
        for start, stop in ((0, 1), (total // 2 - 7, total // 2 + 1000), (total - 300, total)):
            window = _window_blocks(start, stop, length, orig, new, options, checked=True)
            if window is None:
                continue
            part = _window_convolution(lambda lo, hi, x=signal: x[:, lo:hi], length, orig, new, start, stop,
                                       window, options)
            if not torch.equal(part, whole[:, start:stop]):
                return False
    return True


def _window_blocks(start, stop, length, orig_freq, new_freq, options, dtype=torch.float32, checked=False):
    """``(lo, hi, first_block)`` of the strided convolution's input window for the output
    samples ``[start, stop)``, or None when the window would be the whole signal, when the
    rates are equal (no convolution), when the banded path is used or when windows are not
    exact here (:func:`windows_are_exact`)."""
    orig_freq = _check_rate(orig_freq, "orig_freq")
    new_freq = _check_rate(new_freq, "new_freq")
    if orig_freq == new_freq:
        return None
    orig, new = _reduced(orig_freq, new_freq)
    _, width = _kernel_width(orig, new, options)
    taps = 2 * width + orig
    if new * taps > MAX_KERNEL_ELEMENTS:
        return None
    if not checked and not windows_are_exact(orig, new, dtype, options):
        return None
    # resample() pads the signal with width zeros on the left and width + orig on the right and
    # convolves with stride orig: block b (output samples b * new .. b * new + new - 1) reads the
    # padded samples [b * orig, b * orig + taps), i.e. the input [b * orig - width, ... + taps).
    blocks = length // orig + 1
    stop = min(stop, resampled_length(length, orig_freq, new_freq))
    if not 0 <= start < stop:
        return None
    first, last = start // new, (stop - 1) // new
    needed = max(0, -(-(WINDOW_MIN_INPUT - taps) // orig))  # extra blocks for a window of the minimum size
    if last - first < needed:
        grow = needed - (last - first)
        first = max(0, first - grow // 2)
        last = min(blocks - 1, first + needed)
        first = max(0, last - needed)
    if first == 0 and last == blocks - 1:
        return None
    return first * orig - width, last * orig - width + taps, first


def resample_range(
    read,
    length: int,
    orig_freq: int,
    new_freq: int,
    start: int,
    stop: int,
    options: ResampleOptions = ResampleOptions(),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The output samples ``[start, stop)`` of ``resample(x, orig_freq, new_freq)``, bit for
    bit, computed from a window of ``x`` around them instead of the whole signal.

    ``x`` has ``length`` samples and is read through ``read(lo, hi)``, which returns its
    samples ``[lo, hi)`` (``0 <= lo <= hi <= length``) as a floating-point tensor
    ``(n, hi - lo)`` of ``dtype`` (the same ``n`` rows as the whole signal would have: the
    convolution's algorithm depends on it). ``stop`` is clamped to the resampled length. Equal
    rates read ``[start, stop)`` itself (a copy); a window that would span the whole signal, a
    signal shorter than :data:`WINDOW_MIN_INPUT`, the banded path (nearly coprime rates) and a
    machine where windows are not exact (:func:`windows_are_exact`) resample the whole signal
    and slice it, so the result is always ``resample(x)[:, start:stop]``.
    """
    orig_freq = _check_rate(orig_freq, "orig_freq")
    new_freq = _check_rate(new_freq, "new_freq")
    total = resampled_length(length, orig_freq, new_freq)
    stop = min(stop, total)
    if orig_freq == new_freq:
        return read(start, stop).clone()
    window = _window_blocks(start, stop, length, orig_freq, new_freq, options, dtype)
    if window is None:
        return resample(read(0, length), orig_freq, new_freq, options)[:, start:stop]
    orig, new = _reduced(orig_freq, new_freq)
    return _window_convolution(read, length, orig, new, start, stop, window, options, dtype)


def _window_convolution(read, length, orig, new, start, stop, window, options, dtype=None) -> torch.Tensor:
    lo, hi, first = window
    segment = read(max(lo, 0), min(hi, length))
    if not torch.is_tensor(segment) or not segment.is_floating_point() or segment.dim() != 2:
        raise TypeError("read(lo, hi) must return a floating-point tensor (n, hi - lo)")
    if dtype is not None and segment.dtype != dtype:
        raise TypeError(f"read(lo, hi) returned {segment.dtype}, expected {dtype}")
    # The zeros resample() pads the signal with, where the window reaches past its ends.
    padded = F.pad(segment, (max(0, -lo), max(0, hi - length)))[:, None, :]
    kernels = _cached_kernels(orig, new, options, segment.dtype)
    phases = F.conv1d(padded, kernels, stride=orig)  # (n, new, blocks of the window)
    out = phases.transpose(1, 2).reshape(segment.shape[0], -1)
    return out[:, start - first * new : stop - first * new]


def _banded_resample(padded: torch.Tensor, orig: int, new: int, options: ResampleOptions) -> torch.Tensor:
    """The same filter bank applied without materialising it, for nearly coprime rates.

    Only the taps of a phase where ``|base * d| < W`` are not clamped; they form a band of at
    most ``2 * width + 1`` consecutive taps. Each output sample gathers its band (a few taps
    wider, the extra ones are clamped taps, i.e. those the full kernel holds as ~1e-22) and
    takes the dot product with the band's weights, computed with the same formula. Agrees with
    the single-convolution path to float32 rounding.
    """
    dtype = padded.dtype
    base, width = _kernel_width(orig, new, options)
    zero_crossings = options.lowpass_filter_width
    taps = 2 * width + orig
    band = min(taps, 2 * width + 4)
    phases = torch.arange(new, dtype=torch.float64)
    first = torch.floor(width + orig * phases / new - orig * zero_crossings / base).long() - 1
    first = first.clamp(0, taps - band)  # (new,)
    tap_index = first[:, None] + torch.arange(band)[None, :]  # (new, band)

    # The weights, element for element as in _phase_kernels.
    arg = (torch.arange(0, -new, -1, dtype=dtype) / new)[:, None] + (tap_index - width).to(dtype) / orig
    arg *= base
    arg = arg.clamp_(-zero_crossings, zero_crossings)
    hann = torch.cos(arg * math.pi / zero_crossings / 2) ** 2
    arg *= math.pi
    weights = torch.where(arg == 0, torch.ones((), dtype=dtype), arg.sin() / arg)
    weights *= hann * (base / orig)

    blocks = (padded.shape[1] - taps) // orig + 1
    per_chunk = max(1, MAX_KERNEL_ELEMENTS // (new * band))
    outputs = []
    for b0 in range(0, blocks, per_chunk):
        b = torch.arange(b0, min(blocks, b0 + per_chunk))
        index = b[:, None, None] * orig + tap_index[None]  # (nb, new, band)
        gathered = padded[:, index]  # (n, nb, new, band)
        outputs.append((gathered * weights).sum(-1).reshape(padded.shape[0], -1))
    return torch.cat(outputs, dim=1)
