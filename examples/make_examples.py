"""Write the app's example inputs: small, licence-clean media of every modality, drawn or
synthesised here from numbers (no downloads), the same bytes on every run.

    python examples/make_examples.py            # writes into examples/
    python examples/make_examples.py --out DIR  # anywhere else

Needs numpy, Pillow, trimesh and imageio-ffmpeg (for its ffmpeg binary): all in
requirements.txt. Two sets: everyday placeholders (a sunset, birdsong, ...) and, in
``toyworld/``, scenes of the generated toy world that the default model was trained on
(:mod:`imagebind_llm.toyworld`), in every modality, which that model can actually answer about.
"""

from __future__ import annotations

import argparse
import io
import math
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SEED = 20240905


def _save_png(image: Image.Image, path: Path) -> None:
    # Pillow writes no timestamp into PNGs, so the bytes only depend on the pixels.
    image.save(path, format="PNG", optimize=False, compress_level=9)


def sunset(path: Path) -> None:
    """A sun setting over the sea, 256 x 192 RGB."""
    w, h = 256, 192
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    sky = (1 - y) * np.array([70, 90, 200]) + y * np.array([250, 150, 80])
    image = np.broadcast_to(sky, (h, w, 3)).copy()
    image[int(h * 0.62):] = np.array([30, 60, 120]) + 20 * np.sin(np.arange(h - int(h * 0.62)) / 2.0)[:, None, None]
    img = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((98, 70, 158, 130), fill=(255, 220, 90))
    img.paste(Image.fromarray(image[int(h * 0.62):].clip(0, 255).astype(np.uint8)), (0, int(h * 0.62)))
    draw.polygon([(40, 150), (90, 150), (80, 160), (50, 160)], fill=(60, 30, 20))  # a boat
    draw.line((65, 150, 65, 118), fill=(60, 30, 20), width=2)
    draw.polygon([(66, 120), (66, 146), (84, 146)], fill=(240, 240, 230))
    _save_png(img, path)


def house(path: Path) -> None:
    """A house with a red roof on a lawn, 224 x 224 RGB."""
    img = Image.new("RGB", (224, 224), (150, 200, 250))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 160, 224, 224), fill=(70, 160, 60))
    draw.rectangle((52, 100, 172, 170), fill=(235, 225, 200), outline=(90, 70, 50), width=2)
    draw.polygon([(40, 102), (112, 45), (184, 102)], fill=(190, 40, 40))
    draw.rectangle((98, 128, 126, 170), fill=(110, 70, 40))
    draw.rectangle((64, 114, 88, 136), fill=(120, 180, 230), outline=(255, 255, 255), width=2)
    draw.rectangle((138, 114, 162, 136), fill=(120, 180, 230), outline=(255, 255, 255), width=2)
    draw.ellipse((180, 12, 214, 46), fill=(255, 230, 80))
    _save_png(img, path)


def _write_wav(path: Path, signal: np.ndarray, rate: int) -> None:
    import wave

    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def birdsong(path: Path, rate: int = 16000) -> None:
    """Two seconds of bird-like chirps (rising and falling sine sweeps), 16 kHz mono."""
    t = np.arange(int(2.0 * rate)) / rate
    signal = np.zeros_like(t)
    rng = np.random.default_rng(SEED)
    for start in np.arange(0.05, 1.9, 0.23):
        length = 0.12
        mask = (t >= start) & (t < start + length)
        local = t[mask] - start
        f0, f1 = rng.uniform(2500, 3500), rng.uniform(4000, 5500)
        freq = f0 + (f1 - f0) * np.sin(math.pi * local / length)
        phase = 2 * math.pi * np.cumsum(freq) / rate
        signal[mask] += 0.5 * np.sin(phase) * np.hanning(mask.sum())
    signal += 0.01 * rng.standard_normal(len(t))
    _write_wav(path, signal, rate)


def doorbell(path: Path, rate: int = 16000) -> None:
    """A two-tone doorbell (ding-dong), 1.5 s, 16 kHz mono."""
    t = np.arange(int(1.5 * rate)) / rate
    signal = np.zeros_like(t)
    for start, freq in ((0.0, 659.25), (0.6, 523.25)):
        local = np.clip(t - start, 0, None)
        on = t >= start
        tone = sum(np.sin(2 * math.pi * freq * k * local) / k for k in (1, 2, 3))
        signal += on * 0.4 * tone * np.exp(-3.0 * local)
    _write_wav(path, signal, rate)


def bouncing_ball_frames(size: int = 128, fps: int = 12, seconds: float = 3.0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of an orange ball bouncing on a floor."""
    frames = []
    for i in range(int(fps * seconds)):
        t = i / fps
        img = Image.new("RGB", (size, size), (200, 225, 245))
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, size - 20, size, size), fill=(120, 90, 60))
        x = 16 + (size - 32) * (0.5 - 0.5 * math.cos(math.pi * t / seconds))
        height = abs(math.sin(math.pi * 1.5 * t))
        y = size - 20 - 12 - height * (size - 60)
        draw.ellipse((x - 12, y - 12, x + 12, y + 12), fill=(250, 130, 30))
        frames.append(np.asarray(img))
    return np.stack(frames)


def bouncing_ball(path: Path, fps: int = 12) -> None:
    """A 3 s H.264 MP4 (yuv420p, plays in every browser) written by imageio-ffmpeg's binary."""
    import imageio_ffmpeg

    frames = bouncing_ball_frames(fps=fps)
    _, h, w, _ = frames.shape
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-preset", "medium", "-crf", "28", "-pix_fmt", "yuv420p", "-threads", "1",
        "-x264-params", "threads=1", "-movflags", "+faststart", "-map_metadata", "-1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", str(path),
    ]
    subprocess.run(command, input=frames.tobytes(), check=True)


def room_depth(path: Path) -> None:
    """A depth map in millimetres (16-bit PNG): a floor receding to a back wall and a box in
    front, 160 x 120. The word "depth" in the name tells the app what it is."""
    h, w = 120, 160
    rows = np.arange(h)[:, None].repeat(w, axis=1).astype(np.float64)
    depth = np.where(rows < 50, 4000.0, 4000.0 - (rows - 50) / (h - 50) * 3000.0)  # wall, then floor
    depth[60:105, 55:110] = 1600.0  # the box
    depth[30:45, 120:150] = 3000.0  # a picture frame on the wall
    Image.fromarray(depth.astype(np.uint16)).save(path, format="PNG", optimize=False, compress_level=9)


def person_thermal(path: Path) -> None:
    """A thermal image (8-bit grayscale, warmer = brighter): a person by a cool wall, 160 x 120."""
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    image = 40 + 10 * (yy / h)
    body = ((xx - 80) / 22.0) ** 2 + ((yy - 85) / 35.0) ** 2 < 1
    head = ((xx - 80) / 12.0) ** 2 + ((yy - 38) / 14.0) ** 2 < 1
    image = np.where(body, 180, image)
    image = np.where(head, 230, image)
    image[100:120, 10:40] = 120  # a radiator
    _save_png(Image.fromarray(image.astype(np.uint8), mode="L"), path)


def walking_imu(steps: int = 2000, rate: float = 200.0) -> np.ndarray:
    """(6, steps) float32: accelerometer x, y, z (m/s²) and gyroscope x, y, z (rad/s) of a walk."""
    t = np.arange(steps) / rate
    rng = np.random.default_rng(SEED)
    step = 2 * math.pi * 1.8 * t  # 1.8 steps per second
    data = np.stack([
        0.8 * np.sin(step),
        0.3 * np.sin(step / 2),
        9.81 + 1.5 * np.sin(step + 0.5),
        0.2 * np.sin(step / 2 + 1.0),
        0.4 * np.sin(step),
        0.1 * np.sin(step / 2),
    ])
    data += 0.05 * rng.standard_normal(data.shape)
    return data.astype(np.float32)


def imu_npy(path: Path) -> None:
    np.save(path, walking_imu())


def imu_csv(path: Path) -> None:
    data = walking_imu(steps=400).T
    out = io.StringIO()
    out.write("ax,ay,az,gx,gy,gz\n")
    for row in data:
        out.write(",".join(f"{v:.4f}" for v in row) + "\n")
    path.write_text(out.getvalue())


def sphere_points(path: Path, count: int = 2048) -> None:
    """A point cloud (N, 3) float32: a sphere on a flat base."""
    rng = np.random.default_rng(SEED)
    n_sphere = count * 3 // 4
    v = rng.standard_normal((n_sphere, 3))
    sphere = 0.5 * v / np.linalg.norm(v, axis=1, keepdims=True) + np.array([0.0, 0.0, 0.6])
    base = np.column_stack([rng.uniform(-0.8, 0.8, count - n_sphere), rng.uniform(-0.8, 0.8, count - n_sphere),
                            np.zeros(count - n_sphere)])
    np.save(path, np.concatenate([sphere, base]).astype(np.float32))


def cube_obj(path: Path) -> None:
    """A unit cube mesh as Wavefront OBJ text."""
    import trimesh

    mesh = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    path.write_text(trimesh.exchange.obj.export_obj(mesh, include_normals=True, include_texture=False,
                                                    header=None))


def torus_glb(path: Path) -> None:
    """A torus mesh as binary glTF."""
    import trimesh

    mesh = trimesh.creation.torus(major_radius=1.0, minor_radius=0.35, major_sections=32, minor_sections=16)
    mesh.visual.face_colors = [90, 140, 220, 255]
    path.write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh)))


#: file name -> (writer, what it is); the app's tabs and the tests read this list.
EXAMPLES = {
    "sunset.png": (sunset, "image: a sun setting over the sea, with a sailing boat"),
    "house.png": (house, "image: a house with a red roof on a lawn"),
    "birdsong.wav": (birdsong, "audio: two seconds of bird-like chirps, 16 kHz"),
    "doorbell.wav": (doorbell, "audio: a two-tone doorbell, 16 kHz"),
    "bouncing_ball.mp4": (bouncing_ball, "video: an orange ball bouncing across a room, 3 s, H.264"),
    "room_depth.png": (room_depth, "depth: 16-bit PNG in millimetres, a floor, a wall and a box"),
    "person_thermal.png": (person_thermal, "thermal: 8-bit grayscale, a warm person by a cool wall"),
    "walking_imu.npy": (imu_npy, "IMU: (6, 2000) accelerometer + gyroscope of a walk at 200 Hz"),
    "walking_imu.csv": (imu_csv, "IMU: the same walk, 400 rows of ax,ay,az,gx,gy,gz with a header"),
    "sphere_points.npy": (sphere_points, "point cloud: (2048, 3) float32, a sphere on a flat base"),
    "cube.obj": (cube_obj, "mesh: a unit cube (Wavefront OBJ)"),
    "torus.glb": (torus_glb, "mesh: a blue torus (binary glTF)"),
}


#: Toy-world examples: file name (in ``toyworld/``) -> (modality, scene as shape, colour,
#: count, motion, seed). Seeds are fixed so that the renderings are the same on every run.
TOYWORLD_EXAMPLES = {
    "two_red_balls.png": ("image", ("ball", "red", 2, "bouncing", 11)),
    "three_blue_cubes.png": ("image", ("cube", "blue", 3, "still", 12)),
    "yellow_rings_circling.mp4": ("video", ("ring", "yellow", 2, "circling", 13)),
    "four_bells.wav": ("audio", ("pyramid", "green", 4, "still", 14)),  # pyramids ring like bells
    "one_rattle.wav": ("audio", ("cylinder", "purple", 1, "sliding", 15)),  # cylinders rattle
    "three_cylinders_depth.png": ("depth", ("cylinder", "red", 3, "still", 16)),
    "two_cubes_thermal.png": ("thermal", ("cube", "green", 2, "sliding", 17)),
    "spinning_imu.npy": ("imu", ("ball", "blue", 1, "spinning", 18)),
    "sliding_imu.csv": ("imu", ("ring", "red", 1, "sliding", 19)),
    "two_pyramids.ply": ("point", ("pyramid", "purple", 2, "still", 20)),
    "one_ring_points.npy": ("point", ("ring", "yellow", 1, "still", 21)),
}


def make_toyworld_examples(out: Path) -> list[Path]:
    from imagebind_llm.toyworld.files import write_modality
    from imagebind_llm.toyworld.world import Scene

    written = []
    for name, (modality, fields) in TOYWORLD_EXAMPLES.items():
        written.append(write_modality(Scene(*fields), modality, out / name))
    return written


def make_examples(out: Path = HERE) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (writer, _) in EXAMPLES.items():
        writer(out / name)
        written.append(out / name)
    return written + make_toyworld_examples(out / "toyworld")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: examples/)")
    args = parser.parse_args(argv)
    for path in make_examples(args.out):
        print(f"{path.stat().st_size:8d}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
