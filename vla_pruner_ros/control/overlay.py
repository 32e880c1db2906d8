"""Retained-token overlays: the camera frame with pruned patches dimmed and kept ones
outlined, for RViz's Image display and the replay contact sheet."""
from __future__ import annotations

import numpy as np


def patch_boxes(height: int, width: int, rows: int, cols: int, crop_scale: float = 1.0) -> np.ndarray:
    """(rows*cols, 4) int boxes (x0, y0, x1, y1) of the patch grid on an H x W frame.

    ``crop_scale`` < 1 when the policy saw a centre crop (side = sqrt(area fraction)).
    """
    crop_h, crop_w = height * crop_scale, width * crop_scale
    top, left = (height - crop_h) / 2, (width - crop_w) / 2
    ys = np.round(top + np.arange(rows + 1) * crop_h / rows).astype(int)
    xs = np.round(left + np.arange(cols + 1) * crop_w / cols).astype(int)
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([xs[c], ys[r], xs[c + 1], ys[r + 1]], axis=1)


def draw_retained_tokens(
    rgb: np.ndarray,
    rows: int,
    cols: int,
    kept_local: np.ndarray | None,
    dim: float = 0.3,
    outline: tuple[int, int, int] = (255, 220, 0),
    crop_scale: float = 1.0,
) -> np.ndarray:
    """A copy of ``rgb`` with pruned patches dimmed to ``dim`` brightness and kept ones outlined.

    ``kept_local`` holds the kept patch indices of this view (0 .. rows*cols-1), or None when
    the step ran unpruned (the frame is returned with a thin grid only).
    """
    import cv2

    image = np.array(rgb, dtype=np.uint8, copy=True)
    height, width = image.shape[:2]
    boxes = patch_boxes(height, width, rows, cols, crop_scale)
    kept = np.zeros(rows * cols, dtype=bool)
    if kept_local is None:
        kept[:] = True
    else:
        kept[np.asarray(kept_local, dtype=np.int64)] = True
    if not kept.all():
        pruned_mask = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in boxes[~kept]:
            pruned_mask[y0:y1, x0:x1] = True
        image[pruned_mask] = (image[pruned_mask] * dim).astype(np.uint8)
        for x0, y0, x1, y1 in boxes[kept]:
            cv2.rectangle(image, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), outline, 1)
    return image
