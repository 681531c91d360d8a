"""Kaldi-compatible log-mel filterbank ("fbank") features in plain torch.

An independent port of ``torchaudio.compliance.kaldi.fbank`` restricted to the options the
official ImageBind audio loader passes (``htk_compat=True``, ``use_energy=False``,
``window_type="hanning"``, ``dither=0``, 25 ms frames every 10 ms) and the Kaldi defaults it
leaves alone. All of them are fields of :class:`FbankOptions`; sizes are derived from them.

Per frame, in order (Kaldi's ``compute-fbank-feats``):

1. frames of ``window_size = int(sample_frequency * frame_length_ms / 1000)`` samples every
   ``window_shift = int(sample_frequency * frame_shift_ms / 1000)`` samples; with
   ``snip_edges`` only frames that fit entirely: ``1 + (n - window_size) // window_shift``;
2. remove the frame's mean (``remove_dc_offset``);
3. pre-emphasis ``x[i] -= coeff * x[i - 1]`` (the first sample uses itself as predecessor);
4. multiply by the symmetric Hann window;
5. zero-pad to the next power of two (``round_to_power_of_two``; 512 for 400 samples);
6. power spectrum ``|rfft|^2``;
7. triangular filters equally spaced on the mel scale ``1127 ln(1 + f / 700)`` between
   ``low_freq`` and ``high_freq`` (``<= 0`` means an offset from Nyquist); the Nyquist bin
   gets weight 0;
8. natural log, floored at float32 epsilon (1.1920929e-07).

The float32 operation sequence follows the reference, which makes the result bit-identical in
practice (golden README section 3: "pure-torch Kaldi fbank: exact").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["FbankOptions", "kaldi_fbank", "mel_banks", "mel_scale"]

MILLISECONDS = 0.001

#: Kaldi floors energies at numeric_limits<float>::epsilon() before the log.
LOG_FLOOR = torch.finfo(torch.float32).eps

_SUPPORTED_WINDOWS = ("hanning",)


@dataclass(frozen=True)
class FbankOptions:
    """Options of :func:`kaldi_fbank`; the defaults are the ones ImageBind uses.

    Only the values ImageBind needs are implemented for ``window_type`` ("hanning"),
    ``dither`` (0: deterministic), ``use_energy`` (False) and ``snip_edges`` (True); other
    values raise ``ValueError`` instead of being silently ignored. ``htk_compat`` only decides
    where the energy column goes, so with ``use_energy=False`` it has no effect.
    """

    sample_frequency: float = 16000.0
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    num_mel_bins: int = 128
    low_freq: float = 20.0
    high_freq: float = 0.0
    preemphasis_coefficient: float = 0.97
    remove_dc_offset: bool = True
    round_to_power_of_two: bool = True
    snip_edges: bool = True
    window_type: str = "hanning"
    dither: float = 0.0
    use_power: bool = True
    use_log_fbank: bool = True
    use_energy: bool = False
    htk_compat: bool = True
    channel: int = 0

    def __post_init__(self):
        if not (self.sample_frequency > 0 and math.isfinite(self.sample_frequency)):
            raise ValueError(f"sample_frequency must be positive, got {self.sample_frequency!r}")
        if (
            isinstance(self.num_mel_bins, bool)
            or not isinstance(self.num_mel_bins, int)
            or self.num_mel_bins <= 3
        ):
            raise ValueError(f"num_mel_bins must be an int > 3, got {self.num_mel_bins!r}")
        if self.window_size < 2:
            raise ValueError(f"frame_length_ms {self.frame_length_ms!r} gives fewer than 2 samples per frame")
        if self.window_shift <= 0:
            raise ValueError(f"frame_shift_ms {self.frame_shift_ms!r} gives a frame shift of 0 samples")
        if self.padded_window_size % 2:
            raise ValueError(
                "the FFT size must be even: use round_to_power_of_two or another frame_length_ms"
            )
        if not 0.0 <= self.preemphasis_coefficient <= 1.0:
            raise ValueError(
                f"preemphasis_coefficient must be in [0, 1], got {self.preemphasis_coefficient!r}"
            )
        nyquist = 0.5 * self.sample_frequency
        high = self.resolved_high_freq
        if not (0.0 <= self.low_freq < nyquist and 0.0 < high <= nyquist and self.low_freq < high):
            raise ValueError(
                f"bad mel range: low_freq {self.low_freq}, high_freq {self.high_freq} (Nyquist {nyquist})"
            )
        if self.window_type not in _SUPPORTED_WINDOWS:
            raise ValueError(
                f"window_type {self.window_type!r} is not implemented (only {_SUPPORTED_WINDOWS})"
            )
        if self.dither != 0.0:
            raise ValueError("dither is not implemented (it makes features random); use dither=0")
        if self.use_energy:
            raise ValueError("use_energy=True is not implemented (ImageBind does not use the energy column)")
        if not self.snip_edges:
            raise ValueError("snip_edges=False is not implemented (ImageBind uses snip_edges=True)")
        if isinstance(self.channel, bool) or not isinstance(self.channel, int) or self.channel < 0:
            raise ValueError(f"channel must be an int >= 0, got {self.channel!r}")

    @property
    def window_size(self) -> int:
        return int(self.sample_frequency * self.frame_length_ms * MILLISECONDS)

    @property
    def window_shift(self) -> int:
        return int(self.sample_frequency * self.frame_shift_ms * MILLISECONDS)

    @property
    def padded_window_size(self) -> int:
        if not self.round_to_power_of_two:
            return self.window_size
        return 1 << (self.window_size - 1).bit_length()

    @property
    def resolved_high_freq(self) -> float:
        return self.high_freq if self.high_freq > 0.0 else self.high_freq + 0.5 * self.sample_frequency

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (0 if not even one frame fits)."""
        if num_samples < self.window_size:
            return 0
        return 1 + (num_samples - self.window_size) // self.window_shift


def mel_scale(freq):
    """Kaldi's mel scale, 1127 ln(1 + f / 700), for a float or a tensor."""
    if torch.is_tensor(freq):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@lru_cache(maxsize=8)
def _mel_banks(options: FbankOptions) -> torch.Tensor:
    num_bins = options.num_mel_bins
    padded = options.padded_window_size
    mel_low = mel_scale(float(options.low_freq))
    mel_high = mel_scale(float(options.resolved_high_freq))
    mel_step = (mel_high - mel_low) / (num_bins + 1)

    # Edges of triangle b: left b, centre b + 1, right b + 2 steps above mel_low (float32).
    index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + index * mel_step
    centre = mel_low + (index + 1.0) * mel_step
    right = mel_low + (index + 2.0) * mel_step

    # Mel value of every FFT bin below Nyquist.
    bin_hz = options.sample_frequency / padded
    bin_mel = mel_scale(bin_hz * torch.arange(float(padded // 2))).unsqueeze(0)

    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    weights = torch.max(torch.zeros(1), torch.min(rising, falling))
    # The Nyquist bin (index padded // 2) gets no weight.
    return F.pad(weights, (0, 1)).to(torch.float32)


def mel_banks(options: FbankOptions = FbankOptions()) -> torch.Tensor:
    """Triangular filters, shape (num_mel_bins, padded_window_size // 2 + 1), float32."""
    return _mel_banks(options).clone()


@lru_cache(maxsize=8)
def _window(size: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(size, periodic=False, dtype=dtype)


def kaldi_fbank(waveform: torch.Tensor, options: FbankOptions = FbankOptions()) -> torch.Tensor:
    """Log-mel filterbank of one signal: (num_frames, num_mel_bins).

    ``waveform`` is (samples,) or (channels, samples); for the latter only
    ``options.channel`` is used (Kaldi/torchaudio take channel 0 by default). The input is not
    modified. Raises ``ValueError`` if not even one frame fits.
    """
    if not torch.is_tensor(waveform) or not waveform.is_floating_point():
        raise TypeError("kaldi_fbank expects a floating-point torch tensor")
    if waveform.dim() == 2:
        if options.channel >= waveform.shape[0]:
            raise ValueError(
                f"channel {options.channel} does not exist in a {waveform.shape[0]}-channel waveform"
            )
        signal = waveform[options.channel]
    elif waveform.dim() == 1:
        signal = waveform
    else:
        raise ValueError(f"expected (samples,) or (channels, samples), got shape {tuple(waveform.shape)}")

    size, shift = options.window_size, options.window_shift
    if signal.shape[0] < size:
        raise ValueError(f"{signal.shape[0]} samples is shorter than one frame ({size} samples)")
    dtype = signal.dtype

    frames = signal.unfold(0, size, shift)  # (m, size), a view
    if options.remove_dc_offset:
        frames = frames - torch.mean(frames, dim=1).unsqueeze(1)
    if options.preemphasis_coefficient != 0.0:
        previous = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)
        frames = frames - options.preemphasis_coefficient * previous
    frames = frames * _window(size, dtype).unsqueeze(0)
    if options.padded_window_size != size:
        frames = F.pad(frames, (0, options.padded_window_size - size))

    spectrum = torch.fft.rfft(frames).abs()
    if options.use_power:
        spectrum = spectrum.pow(2.0)
    energies = torch.mm(spectrum, _mel_banks(options).to(dtype).T)
    if options.use_log_fbank:
        energies = torch.max(energies, torch.tensor(LOG_FLOOR, dtype=dtype)).log()
    return energies
