"""Point clouds and meshes -> the (N, 3) xyz tensors the 3D encoder (Point-Bind / Point-BERT) reads.

Two modes (``PointOptions.mode``, see :mod:`.common`):

``"official"``
    The official ImageBind-LLM loader (reference.md 2.6), value for value and dtype for dtype:
    no centring, no scaling, no resampling. ``.pt`` and ``.npy`` keep the stored dtype,
    ``.obj`` is parsed from its ``v`` lines to float64, and ``.ply/.pts/.pcd/.xyz`` (Open3D
    in the official code) give float64 xyz. Only the official formats are read. Two
    deliberate differences from the official code, both only where it fails or misreads:
    the format is chosen by the real extension (the official code does a substring test on
    the whole path), and every input is validated (shape, finite values, at least
    :data:`OFFICIAL_MIN_POINTS` points) so that a bad file fails here with a clear message
    rather than inside the model. An (N, C > 3) array gives its first three columns in
    both modes (the encoder only reads xyz; the official code passes all columns and
    crashes in its first Conv1d).

``"corrected"`` (default)
    What the encoder was trained on (Point-BERT/ModelNet): float32, exactly
    ``num_points`` points, centred on the centroid and scaled so that the largest distance
    to it is 1 (``pc_normalize``). More points -> deterministic farthest point sampling;
    fewer points -> every point repeated equally often; meshes -> ``num_points`` points
    sampled on the surface with a fixed seed. A cloud that is already float32, centred,
    of radius 1 and of the right size comes back bit-for-bit unchanged.

Nothing here touches a device: the results are CPU tensors.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import torch

from ..errors import InputError
from .common import DEFAULT_MAX_BYTES, DEFAULT_MODE, FileInput, Mode, Source, as_source, check_mode, load_each

if TYPE_CHECKING:  # pragma: no cover
    import trimesh

logger = logging.getLogger(__name__)

#: Points per cloud of every shipped checkpoint and example (Point-BERT ``npoints``).
DEFAULT_NUM_POINTS = 8192
#: Neighbours per group of the encoder's kNN grouping (Point-BERT ``group_size``).
ENCODER_GROUP_SIZE = 32
#: Official mode refuses smaller clouds: the encoder's kNN needs ``group_size`` points.
OFFICIAL_MIN_POINTS = ENCODER_GROUP_SIZE
#: Corrected mode refuses smaller clouds (4 points are the fewest that span a volume);
#: anything from here up is repeated to ``num_points``.
CORRECTED_MIN_POINTS = 4
#: Default limit on the number of points read from any input.
DEFAULT_MAX_POINTS = 10_000_000
#: Arrays may carry extra per-point columns (normals, colours, intensity...) up to this width.
MAX_COLUMNS = 16
#: A cloud whose centroid is within this distance of the origin and whose largest point norm
#: is within this of 1 counts as already normalised and is not touched.
NORMALISED_TOL = 1e-5
#: In "auto" mesh handling, a file with faces counts as a point cloud (its vertices are used)
#: when its faces use fewer than this fraction of its vertices.
MESH_MIN_USED_FRACTION = 0.5

TORCH_SUFFIXES = (".pt", ".pth")
TEXT_SUFFIXES = (".xyz", ".pts", ".txt", ".csv")
TRIMESH_SUFFIXES = (".ply", ".stl", ".off", ".glb", ".gltf")
SUPPORTED_SUFFIXES = TORCH_SUFFIXES + (".npy",) + TEXT_SUFFIXES + (".pcd", ".obj") + TRIMESH_SUFFIXES
#: What the official loader reads (``.pth`` included: its substring test for ".pt" matches it).
OFFICIAL_SUFFIXES = TORCH_SUFFIXES + (".npy", ".obj", ".ply", ".pts", ".pcd", ".xyz")

ACCEPTED = (
    "point clouds .pt/.pth (a torch tensor (N, 3)), .npy (array (N, 3)), .xyz/.pts/.txt/.csv "
    "(columns x y z ...), .pcd (ascii/binary/binary_compressed), .ply, .obj (v lines); "
    "meshes .obj/.ply/.stl/.off/.glb/.gltf (sampled on the surface); in memory: a numpy array "
    "or torch tensor (N, 3) (or (N, 3 + k), xyz first), a trimesh Trimesh/PointCloud/Scene"
)
ACCEPTED_OFFICIAL = (
    "in official mode the official loader's formats: .pt/.pth, .npy, .obj, .ply, .pts, .pcd, .xyz "
    "(meshes and other formats need mode='corrected')"
)

PointInput = Union[
    FileInput, np.ndarray, torch.Tensor, "trimesh.Trimesh", "trimesh.PointCloud", "trimesh.Scene"
]


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointOptions:
    """How a point cloud is read and prepared.

    Attributes:
        mode: "corrected" (default) or "official" (see the module docstring).
        num_points: points per cloud in corrected mode (ignored in official mode, which never
            resamples); also the number of points sampled on a mesh surface.
        normalise: corrected mode only: centre on the centroid and scale to max norm 1.
        downsample: corrected mode, more than ``num_points`` points: "fps" (farthest point
            sampling from the first candidate, deterministic) or "random" (a seeded random
            subset). The kept points stay in their original order.
        fps_pool: FPS runs on at most ``fps_pool * num_points`` candidates, drawn as a seeded
            random subset first, which bounds its cost (100k points -> 32768 candidates ->
            8192 points in well under a second). ``None``: FPS over every point.
        allow_upsample: corrected mode, fewer than ``num_points`` points: repeat every point
            equally often (True) or refuse the cloud (False).
        mesh_sampling: corrected mode, a file with faces: "surface" (sample ``num_points``
            points on the surface, area-weighted, seeded), "vertices" (use the vertices as
            a cloud) or "auto" (surface, unless the faces use fewer than half of the
            vertices: then the file is a point cloud with a few stray faces, like the
            golden OBJ cloud, and its vertices are used). Official mode always reads the
            vertices of .obj/.ply files, as the official loader does.
        seed: seed of every random choice (surface sampling, random subsets); results are
            deterministic for a given seed.
        max_points: inputs with more points (or mesh vertices) are refused.
        min_points: inputs with fewer points are refused; ``None`` = 32
            (:data:`OFFICIAL_MIN_POINTS`, the encoder's group size) in official mode and 4
            (:data:`CORRECTED_MIN_POINTS`) in corrected mode.
        drop_non_finite: remove points with NaN/inf coordinates (e.g. the invalid pixels of
            an organised PCD) instead of refusing the cloud. Off by default: nothing is
            dropped silently.
    """

    mode: Mode = DEFAULT_MODE
    num_points: int = DEFAULT_NUM_POINTS
    normalise: bool = True
    downsample: Literal["fps", "random"] = "fps"
    fps_pool: int | None = 4
    allow_upsample: bool = True
    mesh_sampling: Literal["auto", "surface", "vertices"] = "auto"
    seed: int = 0
    max_points: int = DEFAULT_MAX_POINTS
    min_points: int | None = None
    drop_non_finite: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)
        _check_int("num_points", self.num_points, 1)
        _check_int("seed", self.seed, 0)
        _check_int("max_points", self.max_points, 1)
        if self.min_points is not None:
            _check_int("min_points", self.min_points, 1)
            if self.min_points > self.max_points:
                raise ValueError(
                    f"min_points ({self.min_points}) must not exceed max_points ({self.max_points})"
                )
        if self.fps_pool is not None:
            _check_int("fps_pool", self.fps_pool, 1)
        for field, value in (
            ("normalise", self.normalise),
            ("allow_upsample", self.allow_upsample),
            ("drop_non_finite", self.drop_non_finite),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{field} must be True or False, got {value!r}")
        if self.downsample not in ("fps", "random"):
            raise ValueError(f"downsample must be 'fps' or 'random', got {self.downsample!r}")
        if self.mesh_sampling not in ("auto", "surface", "vertices"):
            raise ValueError(
                f"mesh_sampling must be 'auto', 'surface' or 'vertices', got {self.mesh_sampling!r}"
            )

    @property
    def effective_min_points(self) -> int:
        if self.min_points is not None:
            return self.min_points
        return OFFICIAL_MIN_POINTS if self.mode == "official" else CORRECTED_MIN_POINTS


def _check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{field} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be at least {minimum}, got {value}")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def load_point_cloud(
    source: PointInput,
    options: PointOptions | None = None,
    *,
    name: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Read one point cloud or mesh and return a CPU tensor (N, 3).

    Args:
        source: a path, bytes (pass ``name=`` with the extension), a binary file object, a
            numpy array or torch tensor (N, 3) / (N, 3 + k) (xyz are the first three columns,
            the others are ignored), or a ``trimesh`` Trimesh / PointCloud / Scene.
        options: :class:`PointOptions`; default: corrected mode, 8192 points.
        name: the name used in messages and, for bytes and file objects, whose extension
            picks the format.
        max_bytes: files larger than this are refused before they are read (``None``: no limit).

    Returns:
        official mode: (N, 3) as the official loader gives it (dtype as stored / float64);
        corrected mode: (num_points, 3) float32, centred, max norm 1.

    Raises:
        InputError: the input cannot be used; the message names it, the problem and what
            is accepted.
    """
    opts = options if options is not None else PointOptions()
    accepted = ACCEPTED_OFFICIAL if opts.mode == "official" else ACCEPTED
    label, loaded = _load_raw(source, opts, name=name, max_bytes=max_bytes, accepted=accepted)
    return _finish(label, loaded, opts, accepted)


def load_point_cloud_batch(
    sources: Sequence[PointInput],
    options: PointOptions | None = None,
    *,
    names: Sequence[str | None] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Read several clouds and stack them to (B, N, 3) (the official function's output shape).

    In corrected mode every cloud has ``num_points`` points. In official mode the clouds are
    not resampled, so they must already have the same number of points (an
    :class:`InputError` lists the counts otherwise); mixed dtypes are promoted by
    ``torch.stack`` as in the official code.
    """
    if names is not None and len(names) != len(sources):
        raise ValueError(f"names has {len(names)} entries for {len(sources)} sources")
    named = list(zip(sources, names or [None] * len(sources))) if isinstance(sources, list) else sources
    clouds = load_each(
        named, lambda pair: load_point_cloud(pair[0], options, name=pair[1], max_bytes=max_bytes), "point cloud",
        ACCEPTED)
    counts = sorted({c.shape[0] for c in clouds})
    if len(counts) > 1:
        raise InputError(
            "point cloud batch",
            f"the clouds have different numbers of points ({', '.join(str(c.shape[0]) for c in clouds)}) "
            "and official mode does not resample",
            "clouds of equal size, or mode='corrected' (resamples every cloud to num_points)",
        )
    return torch.stack(clouds)


def normalize_point_cloud(points: np.ndarray | torch.Tensor, *, tol: float = NORMALISED_TOL) -> torch.Tensor:
    """Centre a cloud on its centroid and scale it so that its largest point norm is 1.

    This is Point-BERT/ModelNet's ``pc_normalize``, the normalisation the point encoder
    was trained with (the official example clouds are exactly like that). It is computed in
    float64 and returned as a float32 tensor (N, 3). A cloud already centred (centroid norm
    <= ``tol``) with max norm within ``tol`` of 1 is only cast to float32, not changed.
    Columns after the third are ignored.

    Raises:
        InputError: not an (N, 3+) array, non-finite values, or all points identical.
    """
    label = "<points>"
    pts = _validate_points(label, _as_tensor(label, points, ACCEPTED), None, ACCEPTED, min_points=1)
    p64 = pts.to(torch.float64).numpy()
    out = _normalised(label, p64, tol)
    if out is None:
        return pts.to(torch.float32).clone()
    return torch.from_numpy(out.astype(np.float32))


def farthest_point_indices(points: np.ndarray | torch.Tensor, k: int, *, start: int = 0) -> np.ndarray:
    """Indices (k,) chosen by farthest point sampling, in the order they are chosen.

    Starts at ``start``; each next point is the one farthest (Euclidean, float64) from the
    chosen set; ties go to the lowest index. Chosen points are never chosen twice, so
    duplicate points only come back once every distinct position has been taken.
    O(N * k) in NumPy: about 0.4 s for 32768 -> 8192 points on one core.
    """
    p = (
        points.detach().cpu().double().numpy()
        if isinstance(points, torch.Tensor)
        else np.asarray(points, np.float64)
    )
    if p.ndim != 2 or p.shape[1] < 3:
        raise ValueError(f"points must have shape (N, 3+), got {tuple(p.shape)}")
    n = p.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    if not 0 <= start < n:
        raise ValueError(f"start must be a point index below {n}, got {start}")
    cols = [np.ascontiguousarray(p[:, i]) for i in range(3)]
    dist = np.full(n, np.inf)
    acc = np.empty(n)
    tmp = np.empty(n)
    chosen = np.empty(k, np.int64)
    current = start
    for i in range(k):
        chosen[i] = current
        c0, c1, c2 = cols[0][current], cols[1][current], cols[2][current]
        np.subtract(cols[0], c0, out=acc)
        np.multiply(acc, acc, out=acc)
        np.subtract(cols[1], c1, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        acc += tmp
        np.subtract(cols[2], c2, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        acc += tmp
        np.minimum(dist, acc, out=dist)
        dist[current] = -1.0  # never pick a chosen point again (matters only for duplicates)
        current = int(dist.argmax())
    return chosen


def resample_indices(
    points: np.ndarray,
    num_points: int,
    *,
    method: Literal["fps", "random"] = "fps",
    seed: int = 0,
    fps_pool: int | None = 4,
) -> np.ndarray | None:
    """Row indices that bring ``points`` (N, 3+) to ``num_points`` rows, or None if N already fits.

    * N > num_points: "fps" = farthest point sampling from the first candidate (after a
      seeded random pre-selection of ``fps_pool * num_points`` candidates when N is larger
      than that), "random" = a seeded random subset; both returned in ascending order, so
      the kept points keep their original order.
    * N < num_points: ``arange(num_points) % N``, i.e. the cloud repeated: every point
      appears ``num_points // N`` or one more times, in the original order. No jitter, no
      invented points, no randomness.
    """
    n = points.shape[0]
    if n == num_points:
        return None
    if n < num_points:
        return np.arange(num_points, dtype=np.int64) % n
    rng = np.random.default_rng(seed)
    if method == "random":
        return np.sort(rng.choice(n, size=num_points, replace=False))
    candidates = np.arange(n, dtype=np.int64)
    if fps_pool is not None and n > fps_pool * num_points:
        candidates = np.sort(rng.choice(n, size=fps_pool * num_points, replace=False))
    picked = farthest_point_indices(points[candidates], num_points, start=0)
    return np.sort(candidates[picked])


def point_cloud_preview(
    points: np.ndarray | torch.Tensor, max_points: int = 4096, *, seed: int = 0
) -> np.ndarray:
    """A cheap, deterministic float32 (M, 3) subset for drawing (e.g. a plotly Scatter3d).

    Accepts (N, 3+) or (1, N, 3+); M = min(N, max_points); a seeded random subset in the
    original order. Rows with NaN/inf are left out (they cannot be drawn).
    """
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 1:
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
    if isinstance(points, torch.Tensor):
        arr = points.detach().cpu().to(torch.float32).numpy()
    else:
        arr = np.asarray(points)
        if arr.dtype.kind not in "fiu":
            raise InputError(
                "<points>", f"cannot draw an array of dtype {arr.dtype}", "a numeric (N, 3) array"
            )
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise InputError(
            "<points>", f"cannot draw an array of shape {tuple(arr.shape)}", "(N, 3) or (1, N, 3)"
        )
    arr = arr[:, :3]
    arr = arr[np.isfinite(arr).all(axis=1)]
    if arr.shape[0] > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(arr.shape[0], size=max_points, replace=False))
        arr = arr[keep]
    return np.array(arr, dtype=np.float32, copy=True)


# --------------------------------------------------------------------------------------------
# Loading: source -> raw points or mesh
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What a reader found: points (N, C) as stored, or a mesh (vertices + faces)."""

    points: torch.Tensor | None = None
    vertices: np.ndarray | None = None  # (V, 3) float64
    faces: np.ndarray | None = None  # (F, 3) int64, may be empty


def _load_raw(source, opts: PointOptions, *, name, max_bytes, accepted) -> tuple[str, _Raw]:
    if isinstance(source, (np.ndarray, torch.Tensor)):
        label = name or ("<tensor>" if isinstance(source, torch.Tensor) else "<array>")
        return label, _Raw(points=_as_tensor(label, source, accepted))
    if type(source).__module__.split(".")[0] == "trimesh":
        label = name or f"<trimesh.{type(source).__name__}>"
        return label, _from_trimesh(label, source, accepted)
    if isinstance(source, Source):
        src = source
    else:
        src = as_source(source, name=name, max_bytes=max_bytes, accepted=accepted)
    return src.name, _read_file(src, opts, accepted)


def _read_file(src: Source, opts: PointOptions, accepted: str) -> _Raw:
    suffix = src.suffix
    if suffix not in SUPPORTED_SUFFIXES:
        what = f"unsupported file type {suffix!r}" if suffix else "no file extension to tell the format"
        if not suffix and src.data is not None:
            what += " (pass name= with the file name when giving bytes)"
        raise src.error(what, accepted)
    if opts.mode == "official" and suffix not in OFFICIAL_SUFFIXES:
        raise src.error(f"the official loader cannot read {suffix} files", accepted)
    if suffix in TORCH_SUFFIXES:
        return _Raw(points=_read_torch(src, accepted))
    if suffix == ".npy":
        return _Raw(points=_read_npy(src, accepted))
    if suffix in TEXT_SUFFIXES:
        return _Raw(points=torch.from_numpy(_read_text_points(src, accepted)))
    if suffix == ".pcd":
        return _Raw(points=torch.from_numpy(_read_pcd(src, accepted)))
    if suffix == ".obj":
        vertices, faces = _read_obj(src, accepted)
        return _Raw(vertices=vertices, faces=faces)
    return _read_with_trimesh(src, accepted)


def _sniff(data: bytes, suffix: str = "") -> str:
    """A hint for messages about misnamed files: what the first bytes look like (nothing when
    they look like the type the extension claims)."""
    head = data[:64]
    for magic, kind in (
        (b"\x93NUMPY", ".npy"),
        (b"PK\x03\x04", "a zip archive (torch .pt or numpy .npz)"),
        (b"ply", ".ply"),
        (b"glTF", ".glb"),
        (b"OFF", ".off"),
        (b"solid", "ASCII .stl"),
        (b"# .PCD", ".pcd"),
        (b"VERSION", ".pcd"),
        (b"\x80\x02", "a legacy torch/pickle file"),
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
    ):
        if head.startswith(magic):
            if suffix and suffix in kind:
                return ""
            return f" (its content looks like {kind})"
    return ""


def _head(src: Source) -> bytes:
    if src.data is not None:
        return src.data[:64]
    with src.open() as f:
        return f.read(64)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _parser_failure(exc: BaseException) -> str:
    """What a parser's exception says about the file: an IndexError or KeyError inside trimesh
    ("list index out of range") means the file is malformed, which is what a user can act on."""
    if isinstance(exc, (IndexError, KeyError, TypeError, AttributeError)):
        return "its header or data is malformed"
    return _short(exc)


def _read_torch(src: Source, accepted: str) -> torch.Tensor:
    try:
        with src.open() as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        msg = _short(exc)
        lowered = str(exc).lower()
        if "unsupported global" in lowered:
            problem = "is not a plain tensor file: it holds Python objects that are not loaded for safety"
        else:
            if "weights only load failed" in lowered:
                msg = (
                    lowered.rsplit("weightsunpickler error:", 1)[-1].strip().split("\n")[0]
                    or "not a torch file"
                )
            problem = f"could not be read as a torch file ({msg[:200]}){_sniff(_head(src), src.suffix)}"
        raise src.error(problem, accepted) from None
    if not isinstance(obj, torch.Tensor):
        raise src.error(f"contains a {type(obj).__name__}, not a tensor", accepted)
    if obj.layout != torch.strided or obj.is_quantized:
        raise src.error("contains a sparse or quantised tensor", accepted)
    return obj


def _read_npy(src: Source, accepted: str) -> torch.Tensor:
    head = _head(src)
    if not head.startswith(b"\x93NUMPY"):
        if head.startswith(b"PK\x03\x04"):
            raise src.error("is a .npz archive or another zip file, not a single .npy array", accepted)
        raise src.error(f"is not a valid .npy file (no NumPy header){_sniff(head, src.suffix)}", accepted)
    try:
        with src.open() as f:
            arr = np.load(f, allow_pickle=False)
            if not isinstance(arr, np.ndarray):
                arr.close()
                raise src.error("is a .npz archive, not a single .npy array", accepted)
    except InputError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise src.error("holds Python objects, not a numeric array", accepted) from None
        raise src.error(
            f"is not a valid .npy file ({_short(exc)}){_sniff(_head(src), src.suffix)}", accepted
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise src.error(
            f"is not a valid .npy file ({_short(exc)}){_sniff(_head(src), src.suffix)}", accepted
        ) from None
    return _as_tensor(src.name, arr, accepted)


def _as_tensor(label: str, obj: Any, accepted: str) -> torch.Tensor:
    """An array or tensor -> a CPU tensor of the same numeric dtype (values untouched)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.layout != torch.strided or t.is_quantized:
            raise InputError(label, "is a sparse or quantised tensor", accepted)
        if t.dtype == torch.bool or t.is_complex():
            raise InputError(label, f"has dtype {t.dtype}, not real numbers", accepted)
        return t
    arr = np.asarray(obj)
    if arr.dtype.kind not in "fiu":
        raise InputError(label, f"has dtype {arr.dtype}, not real numbers", accepted)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(np.ascontiguousarray(arr))
    except TypeError:
        raise InputError(label, f"has dtype {arr.dtype}, which torch cannot hold", accepted) from None


# ---- text point lists (.xyz, .pts, .txt, .csv) ----

_TEXT_SPLIT = re.compile(r"[,\s]+")
_MAX_HEADER_LINES = 50
_COMMENT_PREFIXES = ("#", "//", "%")


def _decode_text(src: Source, accepted: str, what: str) -> str:
    data = src.read_bytes()
    if b"\x00" in data[:8192]:
        raise src.error(f"is a binary file, not {what}{_sniff(data, src.suffix)}", accepted)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise src.error(
            f"is not a text file (not UTF-8), so not {what}{_sniff(data, src.suffix)}", accepted
        ) from None


def _read_text_points(src: Source, accepted: str) -> np.ndarray:
    """Rows of at least three numbers (x y z first; further columns such as normals, colours
    or intensity are ignored), separated by whitespace and/or commas. Empty lines and lines
    starting with #, // or % are skipped; non-numeric lines before the first point (a
    header such as "x,y,z,r,g,b") and a lone integer there (the point count of .pts files)
    are skipped too. Any other line that is not a point is an error. Returns float64."""
    text = _decode_text(src, accepted, "a text point list")
    rows: list[tuple[float, float, float]] = []
    header_lines = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(_COMMENT_PREFIXES):
            continue
        tokens = _TEXT_SPLIT.split(s.strip(","))
        try:
            values = [float(t) for t in tokens[:3]]
        except ValueError:
            values = None
        if values is not None and len(values) == 3:
            rows.append((values[0], values[1], values[2]))
            continue
        if not rows:
            is_count = len(tokens) == 1 and tokens[0].isdigit()
            if values is None or is_count:
                header_lines += 1
                if header_lines > _MAX_HEADER_LINES:
                    break
                continue
        snippet = s if len(s) <= 40 else s[:37] + "..."
        raise src.error(f"line {lineno} is not a point ({snippet!r}): x y z need three numbers", accepted)
    if not rows:
        raise src.error("contains no points (no line with three numbers x y z)", accepted)
    return np.array(rows, dtype=np.float64)


# ---- PCD ----

_PCD_TYPES = {
    ("F", 4): "f4",
    ("F", 8): "f8",
    ("I", 1): "i1",
    ("I", 2): "i2",
    ("I", 4): "i4",
    ("I", 8): "i8",
    ("U", 1): "u1",
    ("U", 2): "u2",
    ("U", 4): "u4",
    ("U", 8): "u8",
}


def _read_pcd(src: Source, accepted: str) -> np.ndarray:
    """Point Cloud Library .pcd (DATA ascii, binary or binary_compressed, little-endian); returns
    the x, y, z fields as float64 (N, 3), as Open3D does in the official loader."""
    data = src.read_bytes()
    header: dict[str, list[str]] = {}
    pos = 0
    data_kind = None
    while pos < len(data) and pos < 1 << 16:
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        line = data[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        key = parts[0].upper()
        if key == "DATA":
            data_kind = parts[1].lower() if len(parts) > 1 else ""
            break
        header[key] = parts[1:]
    if data_kind is None:
        raise src.error(f"is not a PCD file (no DATA line in the header){_sniff(data, src.suffix)}", accepted)

    def bad(problem: str) -> InputError:
        return src.error(f"is not a valid PCD file ({problem})", accepted)

    fields = header.get("FIELDS")
    if not fields:
        raise bad("no FIELDS line")
    sizes_s = header.get("SIZE", [])
    types = [t.upper() for t in header.get("TYPE", [])]
    counts_s = header.get("COUNT", ["1"] * len(fields))
    if not (len(sizes_s) == len(types) == len(counts_s) == len(fields)):
        raise bad("FIELDS, SIZE, TYPE and COUNT have different lengths")
    try:
        sizes = [int(s) for s in sizes_s]
        counts = [int(c) for c in counts_s]
        if "POINTS" in header:
            n = int(header["POINTS"][0])
        else:
            n = int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
    except (ValueError, IndexError, KeyError):
        raise bad("SIZE, COUNT, POINTS or WIDTH/HEIGHT is not a number") from None
    if n < 0 or any(c < 1 for c in counts):
        raise bad("negative POINTS or a COUNT below 1")
    dtypes = []
    for f, t, s in zip(fields, types, sizes, strict=True):
        if (t, s) not in _PCD_TYPES:
            raise bad(f"field {f!r} has unsupported TYPE {t} SIZE {s}")
        dtypes.append(np.dtype("<" + _PCD_TYPES[(t, s)]))
    lower = [f.lower() for f in fields]
    missing = [a for a in "xyz" if a not in lower]
    if missing:
        raise src.error(f"has no {'/'.join(missing)} field (fields: {' '.join(fields)})", accepted)
    xyz_fields = [lower.index(a) for a in "xyz"]
    if n == 0:
        raise src.error("contains no points (POINTS 0)", accepted)
    body = data[pos:]

    if data_kind == "ascii":
        offsets = np.cumsum([0] + counts)
        cols = [int(offsets[i]) for i in xyz_fields]
        width = int(offsets[-1])
        rows = []
        for lineno, line in enumerate(body.decode("ascii", errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < width:
                raise bad(f"data line {lineno} has {len(parts)} values, the header declares {width}")
            try:
                rows.append((float(parts[cols[0]]), float(parts[cols[1]]), float(parts[cols[2]])))
            except ValueError:
                raise bad(f"data line {lineno} holds a value that is not a number") from None
        if len(rows) != n:
            raise bad(f"{len(rows)} data lines for POINTS {n}")
        return np.array(rows, dtype=np.float64)

    if data_kind == "binary":
        struct_dtype = np.dtype(
            {
                "names": [f"f{i}" for i in range(len(fields))],
                "formats": [(dt, (c,)) if c > 1 else dt for dt, c in zip(dtypes, counts, strict=True)],
            }
        )
        need = n * struct_dtype.itemsize
        if len(body) < need:
            raise bad(f"truncated: {len(body)} data bytes for {n} points of {struct_dtype.itemsize} bytes")
        rec = np.frombuffer(body, dtype=struct_dtype, count=n)
        out = [rec[f"f{i}"].reshape(n, -1)[:, 0] for i in xyz_fields]
        return np.stack(out, axis=1).astype(np.float64)

    if data_kind == "binary_compressed":
        if len(body) < 8:
            raise bad("truncated compressed block")
        comp_size, raw_size = np.frombuffer(body[:8], dtype="<u4")
        point_size = sum(dt.itemsize * c for dt, c in zip(dtypes, counts, strict=True))
        if raw_size != n * point_size:
            raise bad(f"the compressed block holds {raw_size} bytes, {n} points need {n * point_size}")
        if len(body) < 8 + comp_size:
            raise bad("truncated compressed block")
        try:
            raw = _lzf_decompress(body[8 : 8 + int(comp_size)], int(raw_size))
        except ValueError as exc:
            raise bad(f"corrupt compressed data: {exc}") from None
        out = []
        field_offsets = np.cumsum([0] + [n * dt.itemsize * c for dt, c in zip(dtypes, counts, strict=True)])
        for i in xyz_fields:
            col = np.frombuffer(raw, dtype=dtypes[i], count=n * counts[i], offset=int(field_offsets[i]))
            out.append(col.reshape(n, counts[i])[:, 0])
        return np.stack(out, axis=1).astype(np.float64)

    raise bad(f"unknown DATA kind {data_kind!r} (ascii, binary and binary_compressed are read)")


def _lzf_decompress(data: bytes, size: int) -> bytes:
    """LZF (liblzf format, as used by PCL's binary_compressed) -> ``size`` bytes."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            run = ctrl + 1
            if i + run > n:
                raise ValueError("literal run past the end of the input")
            out += data[i : i + run]
            i += run
        else:  # back reference
            length = ctrl >> 5
            if length == 7:
                if i >= n:
                    raise ValueError("back reference past the end of the input")
                length += data[i]
                i += 1
            if i >= n:
                raise ValueError("back reference past the end of the input")
            ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
            i += 1
            length += 2
            if ref < 0:
                raise ValueError("back reference before the start of the output")
            if ref + length <= len(out):
                out += out[ref : ref + length]
            else:  # overlapping copy
                for k in range(length):
                    out.append(out[ref + k])
        if len(out) > size:
            raise ValueError("output larger than declared")
    if len(out) != size:
        raise ValueError(f"decompressed to {len(out)} bytes, {size} declared")
    return bytes(out)


# ---- OBJ ----


def _read_obj(src: Source, accepted: str) -> tuple[np.ndarray, np.ndarray]:
    """Wavefront OBJ: ``v x y z ...`` lines (float64; extra values such as w or a vertex colour
    are ignored) and ``f`` lines (1-based or negative indices, ``i/t/n`` forms, polygons
    split into a triangle fan). Other statements (vt, vn, g, o, usemtl, l, p, ...) are
    ignored. The official loader reads exactly the ``v`` lines."""
    text = _decode_text(src, accepted, "a text OBJ file")
    vertices: list[tuple[float, float, float]] = []
    faces: list[tuple[int, int, int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line[0] not in "vf \t":
            continue
        tokens = line.split()
        if not tokens:
            continue
        key = tokens[0]
        if key == "v":
            try:
                vertices.append((float(tokens[1]), float(tokens[2]), float(tokens[3])))
            except (ValueError, IndexError):
                raise src.error(
                    f"line {lineno}: a vertex needs three numbers ({line.strip()[:40]!r})", accepted
                ) from None
        elif key == "f":
            idx = []
            try:
                for tok in tokens[1:]:
                    k = int(tok.split("/", 1)[0])
                    if k == 0:
                        raise ValueError
                    idx.append(k - 1 if k > 0 else len(vertices) + k)
            except ValueError:
                raise src.error(f"line {lineno}: bad face ({line.strip()[:40]!r})", accepted) from None
            if len(idx) < 3 or min(idx) < 0:
                raise src.error(f"line {lineno}: a face needs three valid vertex indices", accepted)
            for j in range(1, len(idx) - 1):
                faces.append((idx[0], idx[j], idx[j + 1]))
    if not vertices:
        raise src.error(
            f"contains no vertices ('v x y z' lines){_sniff(src.read_bytes(), src.suffix)}", accepted
        )
    f = np.array(faces, dtype=np.int64).reshape(-1, 3)
    if f.size and f.max() >= len(vertices):
        raise src.error(f"a face refers to vertex {int(f.max()) + 1} but there are {len(vertices)}", accepted)
    return np.array(vertices, dtype=np.float64), f


# ---- PLY, STL, OFF, GLB, GLTF through trimesh ----


def _trimesh():
    import trimesh  # imported on first use: it is slow to import

    return trimesh


def _read_with_trimesh(src: Source, accepted: str) -> _Raw:
    tm = _trimesh()
    file_type = src.suffix[1:]
    try:
        if src.path is not None:
            geom = tm.load(str(src.path), file_type=file_type, process=False)
        else:
            geom = tm.load(io.BytesIO(src.data), file_type=file_type, process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many kinds of errors on bad files
        hint = ""
        if src.suffix == ".gltf" and src.path is None:
            hint = "; a .gltf that refers to separate buffer files must be given as a path"
        raise src.error(
            f"could not be read as a {src.suffix} file ({_parser_failure(exc)}){_sniff(_head(src), src.suffix)}{hint}",
            accepted,
        ) from None
    try:
        return _from_trimesh(src.name, geom, accepted)
    except InputError as exc:
        raise src.error(
            f"{exc.problem}; the file may be corrupt or not a {src.suffix} file"
            f"{_sniff(_head(src), src.suffix)}",
            accepted,
        ) from None


def _from_trimesh(label: str, geom: Any, accepted: str) -> _Raw:
    tm = _trimesh()
    if isinstance(geom, tm.Scene):
        parts = geom.dump()  # every geometry moved to world coordinates by the scene graph
    else:
        parts = [geom]
    meshes = [g for g in parts if isinstance(g, tm.Trimesh) and len(g.vertices)]
    clouds = [g for g in parts if isinstance(g, tm.PointCloud) and len(g.vertices)]
    if not meshes and not clouds:
        kinds = sorted({type(g).__name__ for g in parts})
        found = f" (found only {', '.join(kinds)})" if kinds else ""
        raise InputError(label, f"contains no mesh and no points{found}", accepted)
    if meshes and clouds:
        raise InputError(label, "contains both meshes and point clouds; give one kind", accepted)
    if clouds:
        vertices = np.concatenate([np.asarray(c.vertices, dtype=np.float64) for c in clouds])
        return _Raw(vertices=vertices, faces=np.zeros((0, 3), np.int64))
    vertex_list, face_list, offset = [], [], 0
    for m in meshes:
        vertex_list.append(np.asarray(m.vertices, dtype=np.float64))
        face_list.append(np.asarray(m.faces, dtype=np.int64).reshape(-1, 3) + offset)
        offset += len(m.vertices)
    return _Raw(vertices=np.concatenate(vertex_list), faces=np.concatenate(face_list))


# --------------------------------------------------------------------------------------------
# Raw -> result
# --------------------------------------------------------------------------------------------


def _finish(label: str, raw: _Raw, opts: PointOptions, accepted: str) -> torch.Tensor:
    if raw.points is not None:
        points = raw.points
    else:
        assert raw.vertices is not None and raw.faces is not None
        if len(raw.vertices) > opts.max_points:
            raise InputError(
                label, f"has {len(raw.vertices)} vertices, more than the limit of {opts.max_points}", accepted
            )
        points = torch.from_numpy(raw.vertices)
        if opts.mode == "corrected" and len(raw.faces) and _use_surface(label, raw, opts):
            points = torch.from_numpy(_sample_surface(label, raw.vertices, raw.faces, opts, accepted))
    pts = _validate_points(label, points, opts, accepted, min_points=opts.effective_min_points)
    if opts.mode == "official":
        return pts.clone(memory_format=torch.contiguous_format)
    return _corrected(label, pts, opts, accepted)


def _use_surface(label: str, raw: _Raw, opts: PointOptions) -> bool:
    if opts.mesh_sampling == "surface":
        return True
    if opts.mesh_sampling == "vertices":
        return False
    used = np.unique(raw.faces).size / len(raw.vertices)
    if used < MESH_MIN_USED_FRACTION:
        logger.info(
            "%s: its faces use only %d of %d vertices; reading it as a point cloud of its vertices "
            "(mesh_sampling='surface' samples the faces instead)",
            label,
            np.unique(raw.faces).size,
            len(raw.vertices),
        )
        return False
    return True


def _sample_surface(
    label: str, vertices: np.ndarray, faces: np.ndarray, opts: PointOptions, accepted: str
) -> np.ndarray:
    if not np.isfinite(vertices).all():
        raise InputError(label, "the mesh has vertices with NaN or infinite coordinates", accepted)
    tm = _trimesh()
    mesh = tm.Trimesh(vertices=vertices, faces=faces, process=False, validate=False)
    area = float(mesh.area)
    if not math.isfinite(area) or area <= 0:
        raise InputError(label, "the mesh has no surface (all its faces have zero area)", accepted)
    samples, _ = tm.sample.sample_surface(mesh, opts.num_points, seed=opts.seed)
    return np.asarray(samples, dtype=np.float64)


def _validate_points(
    label: str, points: torch.Tensor, opts: PointOptions | None, accepted: str, *, min_points: int
) -> torch.Tensor:
    """Shape (N, 3..MAX_COLUMNS) -> xyz (N, 3), finite, within the point-count limits."""
    shape = tuple(points.shape)
    if points.ndim != 2 or not 3 <= shape[1] <= MAX_COLUMNS:
        hint = ""
        if points.ndim == 2 and shape[0] == 3 and shape[1] > MAX_COLUMNS:
            hint = " (a (3, N) array must be transposed)"
        elif points.ndim == 3 and shape[0] == 1:
            hint = " (a batch of one: pass cloud[0], or use load_point_cloud_batch for batches)"
        raise InputError(
            label,
            f"has shape {shape}; expected (N, 3) xyz, or (N, 3 + k) with xyz first and at most "
            f"{MAX_COLUMNS} columns{hint}",
            accepted,
        )
    if points.dtype == torch.bool or points.is_complex():
        raise InputError(label, f"has dtype {points.dtype}, not real numbers", accepted)
    xyz = points[:, :3]
    if xyz.is_floating_point():
        finite = torch.isfinite(xyz).all(dim=1)
        bad = int((~finite).sum())
        if bad:
            if opts is not None and opts.drop_non_finite:
                logger.info(
                    "%s: dropping %d points with NaN/inf coordinates (drop_non_finite=True)", label, bad
                )
                xyz = xyz[finite]
            else:
                raise InputError(
                    label,
                    f"{bad} of {shape[0]} points {'has' if bad == 1 else 'have'} NaN or infinite coordinates",
                    accepted
                    + " (finite coordinates; PointOptions(drop_non_finite=True) removes such points)",
                )
    n = xyz.shape[0]
    if n == 0:
        raise InputError(label, "contains no points", accepted)
    max_points = opts.max_points if opts is not None else None
    if max_points is not None and n > max_points:
        raise InputError(label, f"has {n} points, more than the limit of {max_points}", accepted)
    if n < min_points:
        why = (
            f"the encoder groups points in neighbourhoods of {ENCODER_GROUP_SIZE}"
            if opts is not None and opts.mode == "official" and opts.min_points is None
            else "too few to use"
        )
        if shape[1] > 3 and shape[1] >= shape[0]:
            why += f"; if the array is ({shape[1]}, {shape[0]}) points by columns, transpose it"
        raise InputError(label, f"has only {n} point{'s' if n != 1 else ''}, at least {min_points} are needed "
                                f"({why})", accepted)
    return xyz


def _corrected(label: str, xyz: torch.Tensor, opts: PointOptions, accepted: str) -> torch.Tensor:
    p64 = xyz.to(torch.float64).numpy()
    if (p64 == p64[0]).all():
        raise InputError(label, f"all {len(p64)} points are identical, so the cloud has no shape", accepted)
    p32 = xyz.to(torch.float32)
    n = len(p64)
    if n < opts.num_points and not opts.allow_upsample:
        raise InputError(
            label, f"has {n} points, fewer than num_points={opts.num_points} (allow_upsample=False)", accepted
        )
    idx = resample_indices(
        p64, opts.num_points, method=opts.downsample, seed=opts.seed, fps_pool=opts.fps_pool
    )
    if idx is not None:
        index = torch.from_numpy(idx)
        p64 = p64[idx]
        p32 = p32.index_select(0, index)
    if opts.normalise:
        out = _normalised(label, p64, NORMALISED_TOL)
        if out is not None:
            return torch.from_numpy(out.astype(np.float32))
    return p32.clone(memory_format=torch.contiguous_format)


def _normalised(label: str, p64: np.ndarray, tol: float) -> np.ndarray | None:
    """pc_normalize in float64, or None when the cloud is already normalised within ``tol``."""
    centroid = p64.mean(axis=0)
    radius0 = float(np.sqrt((p64 * p64).sum(axis=1).max()))
    if float(np.linalg.norm(centroid)) <= tol and abs(radius0 - 1.0) <= tol:
        return None
    centred = p64 - centroid
    radius = float(np.sqrt((centred * centred).sum(axis=1).max()))
    if not radius > 0 or not math.isfinite(radius):
        raise InputError(label, "all points are identical, so the cloud cannot be scaled", ACCEPTED)
    return centred / radius


__all__ = [
    "ACCEPTED",
    "CORRECTED_MIN_POINTS",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_NUM_POINTS",
    "ENCODER_GROUP_SIZE",
    "MAX_COLUMNS",
    "NORMALISED_TOL",
    "OFFICIAL_MIN_POINTS",
    "OFFICIAL_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "PointOptions",
    "farthest_point_indices",
    "load_point_cloud",
    "load_point_cloud_batch",
    "normalize_point_cloud",
    "point_cloud_preview",
    "resample_indices",
]
