"""Camera messages to RGB arrays, without cv_bridge.

Works on anything with the fields of ``sensor_msgs/Image`` (height, width, encoding, step,
is_bigendian, data) or ``sensor_msgs/CompressedImage`` (format, data): rclpy messages online
and rosbags-deserialised messages in the offline replay, so both see identical pixels.
"""
from __future__ import annotations

import numpy as np

# encoding -> (channels, channel order to take for RGB)
_ENCODINGS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
    "8uc1": (1, (0, 0, 0)),
    "8uc3": (3, (2, 1, 0)),  # OpenCV's default channel order is BGR
}
SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


class ImageConversionError(ValueError):
    """The message cannot be turned into an RGB image; the text says what was expected."""


def _as_bytes(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def image_to_rgb(msg) -> np.ndarray:
    """An H x W x 3 uint8 RGB copy of a ``sensor_msgs/Image``."""
    encoding = str(msg.encoding).lower()
    if encoding not in _ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r}; expected one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    channels, order = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image size {width}x{height} is empty; expected width and height > 0")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(
            f"image step {step} is smaller than width*channels = {width}*{channels} = {row_bytes} for {encoding}"
        )
    data = _as_bytes(msg.data)
    if data.size < step * height:
        raise ImageConversionError(
            f"image data holds {data.size} bytes; expected step*height = {step}*{height} = {step * height}"
        )
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def compressed_to_rgb(msg) -> np.ndarray:
    """An H x W x 3 uint8 RGB image decoded from a ``sensor_msgs/CompressedImage`` (jpeg/png)."""
    import cv2

    data = _as_bytes(msg.data)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageConversionError(
            f"compressed image ({msg.format!r}, {data.size} bytes) could not be decoded; expected JPEG or PNG data"
        )
    return np.ascontiguousarray(decoded[:, :, ::-1])


def rgb_to_image_fields(rgb: np.ndarray) -> dict:
    """Field values of an rgb8 ``sensor_msgs/Image`` holding ``rgb`` (H x W x 3 uint8)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 array, got shape {rgb.shape}")
    height, width, _ = rgb.shape
    return {"height": height, "width": width, "encoding": "rgb8", "is_bigendian": 0,
            "step": width * 3, "data": rgb.tobytes()}


def make_image_converter():
    """The node's ``sensor_msgs/Image`` -> RGB function: cv_bridge where it is importable (a full
    ROS install; it knows more encodings), our converter otherwise. For anything cv_bridge cannot
    convert, our converter runs and raises its clear error (or handles it)."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return image_to_rgb
    bridge = CvBridge()

    def convert(msg) -> np.ndarray:
        try:
            return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception:  # noqa: BLE001 - cv_bridge raises several types; ours says what is wrong
            return image_to_rgb(msg)

    return convert
