"""Episode videos: MP4 through OpenCV's VideoWriter, or an animated GIF through Pillow."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

VIDEO_FORMATS = ("mp4", "gif")


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: int = 20,
                video_format: str = "mp4") -> Path:
    """Write RGB uint8 frames (all the same size) to ``path`` + ".mp4" or ".gif". Returns the path
    written: an MP4 falls back to GIF when OpenCV cannot open an MP4 writer here."""
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format={video_format!r}: expected one of {VIDEO_FORMATS}")
    if not frames:
        raise ValueError("write_video: no frames")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] != 3 or any(f.shape != shape or f.dtype != np.uint8 for f in frames):
        raise ValueError(f"write_video: expected RGB uint8 frames of one size, first is {shape}")
    if fps < 1:
        raise ValueError(f"fps={fps}: expected >= 1")
    path = Path(path)
    # Names may hold dots (keep ratios): add the extension rather than replace a "suffix".
    base = path.with_suffix("") if path.suffix.lower() in (".mp4", ".gif") else path
    base.parent.mkdir(parents=True, exist_ok=True)
    if video_format == "mp4":
        import cv2

        target = base.with_name(base.name + ".mp4")
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (shape[1], shape[0]))
        if writer.isOpened():
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            if target.is_file() and target.stat().st_size > 0:
                return target
        writer.release()
    from PIL import Image

    target = base.with_name(base.name + ".gif")
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(target, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return target
