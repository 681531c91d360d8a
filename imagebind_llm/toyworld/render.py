"""Rendering a scene in every modality, consistently: the same objects, at the same places,
doing the same motion. Pure functions of a :class:`~.world.Scene` (its seed drives the
nuisances); they return in-memory data, and ``files.py`` writes it in user formats.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .world import Scene

SIZE = 224  # image, video, depth and thermal side (the encoders' input size: no resampling)
COLOUR_RGB = {"red": (214, 48, 40), "green": (46, 170, 66), "blue": (40, 90, 220), "yellow": (236, 200, 30),
              "purple": (140, 60, 190)}
AUDIO_RATE = 16000
AUDIO_SECONDS = 2.0  # ImageBind takes 2 s clips: the whole sound is in every clip
VIDEO_FPS = 10
VIDEO_SECONDS = 3.0
IMU_RATE = 200
IMU_STEPS = 2000
MOTION_PERIOD = 1.6  # seconds, for the periodic motions
# A still image shows motion as a long exposure: faded copies over the last TRAIL_SECONDS, long
# enough (three quarters of a period) that a slide, a bounce and a circle leave different streaks.
TRAIL_SECONDS = 1.2
TRAIL_COPIES = 6


# ---------------------------------------------------------------------------------------------
# Layout: where the objects are, and how they move
# ---------------------------------------------------------------------------------------------


def layout(scene: Scene) -> tuple[np.ndarray, float]:
    """Centres (count, 2) in pixels and the object radius, non-overlapping, with room to move."""
    rng = scene.rng("layout")
    radius = {1: 40, 2: 32, 3: 27, 4: 24, 5: 21}[scene.count] * rng.uniform(0.85, 1.1)
    margin = radius + 22
    centres: list[np.ndarray] = []
    for _ in range(2000):
        if len(centres) == scene.count:
            break
        candidate = rng.uniform(margin, SIZE - margin, size=2)
        if all(np.linalg.norm(candidate - c) > 2.6 * radius for c in centres):
            centres.append(candidate)
    while len(centres) < scene.count:  # a tight fallback grid (never reached in practice)
        k = len(centres)
        centres.append(np.array([margin + (k % 3) * 2.6 * radius, margin + (k // 3) * 2.6 * radius]))
    return np.array(centres), float(radius)


def displacement(scene: Scene, t: float, radius: float) -> tuple[float, float, float]:
    """(dx, dy, rotation in radians) of every object at time t (seconds)."""
    phase = scene.rng("phase").uniform(0, 2 * math.pi)
    amplitude = 0.8 * radius
    w = 2 * math.pi / MOTION_PERIOD
    if scene.motion == "sliding":
        return amplitude * math.sin(w * t + phase), 0.0, 0.0
    if scene.motion == "bouncing":
        return 0.0, -amplitude * abs(math.sin(w * t / 2 + phase)), 0.0
    if scene.motion == "circling":
        return amplitude * math.cos(w * t + phase), amplitude * math.sin(w * t + phase), 0.0
    if scene.motion == "spinning":
        return 0.0, 0.0, w * t + phase
    return 0.0, 0.0, 0.0


def trail_times(scene: Scene) -> list[float]:
    """Past instants drawn as faded copies in a still image (a long exposure)."""
    if scene.motion == "still":
        return []
    return [-TRAIL_SECONDS * (TRAIL_COPIES - k) / TRAIL_COPIES for k in range(TRAIL_COPIES)]


# ---------------------------------------------------------------------------------------------
# Image and video
# ---------------------------------------------------------------------------------------------


def _background(scene: Scene, purpose: str) -> Image.Image:
    rng = scene.rng(purpose)
    top = np.array([rng.uniform(200, 245)] * 3) + rng.uniform(-12, 12, 3)
    bottom = top - rng.uniform(15, 45)
    ramp = np.linspace(0, 1, SIZE)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0, 3, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.broadcast_to(pixels, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8))


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float):
    """The outline of a shape as drawing commands: ("ellipse" | "polygon" | "ring", points)."""
    def rotate(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if shape == "ball":
        return "ellipse", [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "ring":
        return "ring", [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "cube":
        return "polygon", rotate([(-r * 0.85, -r * 0.85), (r * 0.85, -r * 0.85), (r * 0.85, r * 0.85),
                                  (-r * 0.85, r * 0.85)])
    if shape == "pyramid":
        return "polygon", rotate([(0, -r), (r * 0.95, r * 0.8), (-r * 0.95, r * 0.8)])
    if shape == "cylinder":
        return "polygon", rotate([(-r * 0.5, -r), (r * 0.5, -r), (r * 0.5, r), (-r * 0.5, r)])
    raise ValueError(shape)


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float,
                 fill, shade, mark) -> None:
    kind, points = _shape_polygon(shape, cx, cy, r, angle)
    if kind == "ellipse":
        draw.ellipse(points, fill=fill)
        draw.ellipse([(cx - r * 0.55, cy - r * 0.6), (cx - r * 0.05, cy - r * 0.1)], fill=shade)
    elif kind == "ring":
        draw.ellipse(points, fill=fill)
        inner = r * 0.48
        draw.ellipse([(cx - inner, cy - inner), (cx + inner, cy + inner)], fill=mark)
    else:
        draw.polygon(points, fill=fill)
        # a darker outline gives the flat shapes some depth without changing their silhouette
        draw.line(points + [points[0]], fill=shade, width=3)
    # A stripe through the centre makes rotation visible (spinning balls look still otherwise).
    c, s = math.cos(angle), math.sin(angle)
    draw.line([(cx - c * r * 0.7, cy - s * r * 0.7), (cx + c * r * 0.7, cy + s * r * 0.7)], fill=shade, width=3)


def _object_colours(scene: Scene, purpose: str):
    rng = scene.rng(purpose)
    base = np.clip(np.array(COLOUR_RGB[scene.colour]) + rng.normal(0, 10, 3), 0, 255)
    return tuple(int(v) for v in base), tuple(int(v * 0.7) for v in base)


def render_frame(scene: Scene, t: float, *, trails: bool, purpose: str = "image",
                 background: Image.Image | None = None) -> Image.Image:
    """The scene at time t as an RGB image; ``trails`` adds the long-exposure copies.
    ``background``: the scene's background for ``purpose``, when already drawn (it is the same
    in every frame, and drawing it is most of the cost of a frame)."""
    image = (background if background is not None else _background(scene, purpose + "/bg")).copy()
    fill, shade = _object_colours(scene, purpose + "/colour")
    centres, radius = layout(scene)
    mark = image.getpixel((SIZE // 2, 2))
    if trails:
        for k, past in enumerate(trail_times(scene)):
            ghost = Image.new("RGB", image.size)
            mask = Image.new("L", image.size, 0)
            draw, draw_mask = ImageDraw.Draw(ghost), ImageDraw.Draw(mask)
            dx, dy, rot = displacement(scene, t + past, radius)
            for cx, cy in centres:
                _draw_object(draw, scene.shape, cx + dx, cy + dy, radius, rot, fill, shade, mark)
                _draw_object(draw_mask, scene.shape, cx + dx, cy + dy, radius, rot, 255, 255, 0)
            alpha = int(40 + 20 * k)  # older copies fainter
            image.paste(ghost, (0, 0), mask.point(lambda v, a=alpha: a if v else 0))
    draw = ImageDraw.Draw(image)
    dx, dy, rot = displacement(scene, t, radius)
    for cx, cy in centres:
        _draw_object(draw, scene.shape, cx + dx, cy + dy, radius, rot, fill, shade, mark)
    return image


def render_image(scene: Scene) -> Image.Image:
    return render_frame(scene, 0.0, trails=True)


def render_video(scene: Scene) -> tuple[np.ndarray, int]:
    """Frames (T, H, W, 3) uint8 and the frame rate."""
    count = int(VIDEO_FPS * VIDEO_SECONDS)
    background = _background(scene, "video/bg")
    frames = [np.asarray(render_frame(scene, i / VIDEO_FPS, trails=False, purpose="video", background=background))
              for i in range(count)]
    return np.stack(frames), VIDEO_FPS


# ---------------------------------------------------------------------------------------------
# Depth and thermal: the same silhouettes, other physics
# ---------------------------------------------------------------------------------------------


def _masks(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Object mask (H, W) bool and a bulge map in [0, 1] (1 at the nearest/warmest part)."""
    centres, radius = layout(scene)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    mask = np.zeros((SIZE, SIZE), bool)
    bulge = np.zeros((SIZE, SIZE), np.float32)
    for cx, cy in centres:
        x, y = (xx - cx) / radius, (yy - cy) / radius
        rho = np.sqrt(x * x + y * y)
        if scene.shape == "ball":
            inside = rho <= 1
            height = np.sqrt(np.clip(1 - rho**2, 0, 1))
        elif scene.shape == "ring":
            inside = (rho <= 1) & (rho >= 0.48)
            height = np.sqrt(np.clip(1 - ((rho - 0.74) / 0.26) ** 2, 0, 1))
        elif scene.shape == "cube":
            inside = (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
            height = np.full_like(x, 0.8)
        elif scene.shape == "pyramid":
            inside = (y <= 0.8) & (y >= -1) & (np.abs(x) <= 0.95 * (y + 1) / 1.8)
            height = np.clip(1 - np.abs(x) / 0.95, 0, 1) * 0.9
        else:  # cylinder
            inside = (np.abs(x) <= 0.5) & (np.abs(y) <= 1)
            height = np.sqrt(np.clip(1 - (x / 0.5) ** 2, 0, 1))
        mask |= inside
        bulge = np.where(inside, np.maximum(bulge, height), bulge)
    return mask, bulge


def render_depth(scene: Scene) -> np.ndarray:
    """Depth in millimetres (H, W) uint16: a receding floor, objects about 2 m away; 0 = missing."""
    rng = scene.rng("depth")
    mask, bulge = _masks(scene)
    rows = np.linspace(0, 1, SIZE)[:, None]
    floor = rng.uniform(4200, 5200) * (1 - rows) + rng.uniform(2600, 3200) * rows
    distance = rng.uniform(1800, 2300)
    _, radius = layout(scene)
    depth = np.where(mask, distance - bulge * radius * 4.0, floor)
    depth = depth + rng.normal(0, 6, depth.shape)
    depth[rng.random(depth.shape) < 0.002] = 0  # a few missing readings, as real sensors have
    return np.clip(depth, 0, 65535).astype(np.uint16)


def render_thermal(scene: Scene) -> np.ndarray:
    """An 8-bit thermal image (H, W): warm objects on a cool background, blurred like a microbolometer."""
    rng = scene.rng("thermal")
    mask, bulge = _masks(scene)
    rows = np.linspace(0, 1, SIZE)[:, None]
    background = rng.uniform(35, 60) + 20 * rows + rng.normal(0, 4, (SIZE, SIZE))
    warm = rng.uniform(170, 215) + 30 * bulge
    pixels = np.where(mask, warm, background)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)))


# ---------------------------------------------------------------------------------------------
# Audio: every kind of object has its sound; one sound per object
# ---------------------------------------------------------------------------------------------


def _event(shape: str, rng: np.random.Generator, rate: int) -> np.ndarray:
    length = int(0.3 * rate)
    t = np.arange(length) / rate
    pitch = rng.uniform(0.9, 1.1)
    if shape == "ball":  # a springy boing: a falling tone
        freq = pitch * (420 - 260 * t / t[-1])
        wave = np.sin(2 * np.pi * np.cumsum(freq) / rate) * np.exp(-t * 9)
    elif shape == "cube":  # a dull knock: low damped tone and a noise burst
        wave = np.sin(2 * np.pi * pitch * 140 * t) * np.exp(-t * 30) + 0.5 * rng.normal(0, 1, length) * np.exp(-t * 80)
    elif shape == "pyramid":  # a bell: inharmonic partials, slow decay
        wave = sum(a * np.sin(2 * np.pi * pitch * f * t) for f, a in ((880, 1.0), (1460, 0.6), (2350, 0.4)))
        wave = wave * np.exp(-t * 6)
    elif shape == "ring":  # a whistle: high tone with vibrato
        freq = pitch * 1900 * (1 + 0.02 * np.sin(2 * np.pi * 7 * t))
        wave = np.sin(2 * np.pi * np.cumsum(freq) / rate) * np.minimum(1, 20 * t) * np.minimum(1, 20 * (t[-1] - t))
    else:  # cylinder: a rattle of clicks
        wave = np.zeros(length)
        for start in np.linspace(0, length - 200, 7).astype(int):
            wave[start:start + 200] += rng.normal(0, 1, 200) * np.exp(-np.arange(200) / 40)
    return wave / (np.abs(wave).max() + 1e-9)


def render_audio(scene: Scene) -> tuple[np.ndarray, int]:
    """A mono waveform (samples,) float32 in [-1, 1] and its rate: ``count`` sounds of the
    object's kind, evenly spread over the clip, on a little background noise."""
    rng = scene.rng("audio")
    total = int(AUDIO_SECONDS * AUDIO_RATE)
    audio = rng.normal(0, 0.01, total)
    slot = total / scene.count
    for k in range(scene.count):
        start = int(k * slot + rng.uniform(0.02, 0.12) * AUDIO_RATE)
        event = _event(scene.shape, rng, AUDIO_RATE) * rng.uniform(0.5, 0.8)
        end = min(total, start + len(event))
        audio[start:end] += event[: end - start]
    return np.clip(audio, -1, 1).astype(np.float32), AUDIO_RATE


# ---------------------------------------------------------------------------------------------
# IMU: the motion, as an accelerometer and gyroscope on the object would record it
# ---------------------------------------------------------------------------------------------


def render_imu(scene: Scene) -> np.ndarray:
    """(6, 2000) float32: accelerometer x, y, z (m/s^2, gravity on z) and gyroscope x, y, z (rad/s)."""
    rng = scene.rng("imu")
    t = np.arange(IMU_STEPS) / IMU_RATE
    w = 2 * np.pi / (MOTION_PERIOD * rng.uniform(0.8, 1.25))
    phase = rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(2.0, 4.0)
    acc = np.zeros((3, IMU_STEPS))
    gyro = np.zeros((3, IMU_STEPS))
    acc[2] = 9.81
    if scene.motion == "sliding":
        acc[0] = amplitude * np.sin(w * t + phase)
    elif scene.motion == "bouncing":
        acc[2] += amplitude * 1.5 * np.maximum(0, np.cos(w * t + phase)) ** 3 - amplitude * 0.3
    elif scene.motion == "circling":
        acc[0] = amplitude * np.cos(w * t + phase)
        acc[1] = amplitude * np.sin(w * t + phase)
        gyro[2] = w * 0.15
    elif scene.motion == "spinning":
        gyro[2] = rng.choice([-1, 1]) * rng.uniform(3.0, 6.0)
    acc += rng.normal(0, 0.15, acc.shape)
    gyro += rng.normal(0, 0.03, gyro.shape)
    return np.concatenate([acc, gyro]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# 3D: the objects as meshes
# ---------------------------------------------------------------------------------------------


def render_mesh(scene: Scene):
    """A trimesh.Trimesh of ``count`` objects of the scene's shape, side by side on the ground."""
    import trimesh

    rng = scene.rng("mesh")
    centres, radius = layout(scene)
    parts = []
    for cx, cy in centres:
        r = 1.0
        if scene.shape == "ball":
            part = trimesh.creation.icosphere(subdivisions=2, radius=r)
        elif scene.shape == "cube":
            part = trimesh.creation.box(extents=(1.7 * r, 1.7 * r, 1.7 * r))
        elif scene.shape == "pyramid":
            part = trimesh.creation.cone(radius=1.2 * r, height=2 * r, sections=4)
        elif scene.shape == "ring":
            part = trimesh.creation.torus(major_radius=0.75 * r, minor_radius=0.27 * r)
        else:
            part = trimesh.creation.cylinder(radius=0.5 * r, height=2 * r, sections=24)
        angle = rng.uniform(-0.4, 0.4)
        part.apply_transform(trimesh.transformations.rotation_matrix(angle, (0, 0, 1)))
        # image x -> 3D x, image y (down) -> 3D -y; objects keep their relative placement
        part.apply_translation(((cx - SIZE / 2) / radius, -(cy - SIZE / 2) / radius, 0.0))
        parts.append(part)
    return trimesh.util.concatenate(parts)


def render_points(scene: Scene, num_points: int = 8192) -> np.ndarray:
    """(num_points, 3) float32 surface samples of :func:`render_mesh` (fixed seed)."""
    import trimesh

    points, _ = trimesh.sample.sample_surface(render_mesh(scene), num_points, seed=scene.seed % 2**31)
    return np.asarray(points, dtype=np.float32)
