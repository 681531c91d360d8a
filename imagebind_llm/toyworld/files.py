"""Writing rendered scenes as the files a user would upload (so that training and evaluation go
through the same preprocessing as the app): PNG/JPEG images, mp4 videos, WAV audio, 16-bit
PNG depth, 8-bit PNG thermal, IMU .npy/.csv, and 3D as meshes (.ply/.obj/.glb) or clouds (.npy).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from . import render
from .world import Scene

#: File name suffix of each modality's main file.
SUFFIX = {"image": ".png", "video": ".mp4", "audio": ".wav", "depth": "_depth.png", "thermal": "_thermal.png",
          "imu": "_imu.npy", "point": ".ply"}


def write_video(frames: np.ndarray, fps: int, path: Path) -> None:
    """H.264 mp4 through the ffmpeg binary that ``imageio-ffmpeg`` ships (raw RGB frames on stdin)."""
    import imageio_ffmpeg

    count, height, width, _ = frames.shape
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p",
               "-preset", "veryfast", "-crf", "20", str(path)]
    subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), check=True)


def write_audio(samples: np.ndarray, rate: int, path: Path) -> None:
    import soundfile

    soundfile.write(str(path), samples, rate, subtype="PCM_16")


def write_modality(scene: Scene, modality: str, path: Path) -> Path:
    """Render ``scene`` in ``modality`` and write it to ``path`` (format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if modality == "image":
        render.render_image(scene).save(path, compress_level=1)  # lossless; level 6 doubled the writing time
    elif modality == "video":
        write_video(*render.render_video(scene), path)
    elif modality == "audio":
        write_audio(*render.render_audio(scene), path)
    elif modality == "depth":
        Image.fromarray(render.render_depth(scene)).save(path)  # uint16 -> 16-bit PNG, millimetres
    elif modality == "thermal":
        Image.fromarray(render.render_thermal(scene)).save(path)
    elif modality == "imu":
        data = render.render_imu(scene)
        if path.suffix == ".csv":
            header = "accel_x,accel_y,accel_z,gyro_x,gyro_y,gyro_z"
            np.savetxt(path, data.T, delimiter=",", header=header, comments="", fmt="%.5f")
        else:
            np.save(path, data)
    elif modality == "point":
        if path.suffix == ".npy":
            np.save(path, render.render_points(scene))
        else:
            render.render_mesh(scene).export(path)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    return path


def scene_file(folder: Path, scene_index: int, modality: str) -> Path:
    return Path(folder) / modality / f"scene{scene_index:05d}{SUFFIX[modality]}"
