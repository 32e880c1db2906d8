"""Camera messages to RGB arrays, without cv_bridge.

Works on anything with the fields of ``sensor_msgs/Image`` (height, width, encoding, step,
is_bigendian, data) or ``sensor_msgs/CompressedImage`` (format, data): rclpy messages online
and rosbags-deserialised messages in the offline replay, so both see identical pixels.
"""
from __future__ import annotations

import struct
import threading
from typing import Any, Callable

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
# Largest frame (width*height) decoded or converted by default; the node's max_image_pixels.
DEFAULT_MAX_IMAGE_PIXELS = 4_194_304


class ImageConversionError(ValueError):
    """The message cannot be turned into an RGB image; the text says what was expected."""


def _as_bytes(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def _check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageConversionError(
            f"{what} is {width}x{height} = {width * height} pixels, more than max_image_pixels {max_pixels}; "
            "refused before decoding (raise max_image_pixels for a larger camera)")


def image_to_rgb(msg, max_pixels: int | None = None) -> np.ndarray:
    """An H x W x 3 uint8 RGB copy of a ``sensor_msgs/Image`` (at most ``max_pixels`` pixels)."""
    encoding = str(msg.encoding).lower()
    if encoding not in _ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r}; expected one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    channels, order = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image size {width}x{height} is empty; expected width and height > 0")
    _check_pixels(width, height, max_pixels, "image")
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


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def declared_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) a PNG or JPEG header declares, read without decoding anything;
    None for data that is neither. Raises ImageConversionError for a header cut short."""
    data = bytes(data[:1 << 20]) if len(data) > 1 << 20 else bytes(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageConversionError("compressed image: PNG without an IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2:i + 4])
            if marker in _JPEG_SOF:
                if i + 9 > len(data):
                    break
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return "jpeg", width, height
            if marker == 0xDA or length < 2:  # scan data before any frame header: malformed
                break
            i += 2 + length
        raise ImageConversionError("compressed image: JPEG without a readable frame header (SOF)")
    return None


def compressed_to_rgb(msg, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """An H x W x 3 uint8 RGB image decoded from a ``sensor_msgs/CompressedImage`` (jpeg/png).

    The size the header declares is checked against ``max_pixels`` before anything is decoded:
    a few hundred bytes can declare a 20000 x 20000 frame (gigabytes, tens of seconds)."""
    import cv2

    data = _as_bytes(msg.data)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    declared = declared_size(data[:1 << 20].tobytes())
    if declared is None:
        raise ImageConversionError(f"compressed image ({msg.format!r}, {data.size} bytes) could not be decoded: "
                                   "it has neither a PNG nor a JPEG header; expected JPEG or PNG data")
    kind, width, height = declared
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"compressed image: its {kind} header declares an empty {width}x{height} frame")
    _check_pixels(width, height, max_pixels, f"compressed image ({kind} header)")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageConversionError(
            f"compressed image ({msg.format!r}, {data.size} bytes) could not be decoded; expected JPEG or PNG data"
        )
    if decoded.shape[:2] not in ((height, width), (width, height)):  # (EXIF orientation may transpose)
        # the decoder read another header than the one checked
        raise ImageConversionError(f"compressed image decoded to {decoded.shape[1]}x{decoded.shape[0]} but its "
                                   f"header declares {width}x{height}")
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
    """The node's ``sensor_msgs/Image`` -> RGB function ``convert(msg, max_pixels=None)``: cv_bridge
    where it is importable (a full ROS install; it knows more encodings), our converter otherwise.
    For anything cv_bridge cannot convert, our converter runs and raises its clear error (or
    handles it). The pixel cap is checked before either converts anything."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return image_to_rgb
    bridge = CvBridge()

    def convert(msg, max_pixels: int | None = None) -> np.ndarray:
        _check_pixels(int(msg.width), int(msg.height), max_pixels, "image")
        try:
            return np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception:  # noqa: BLE001 - cv_bridge raises several types; ours says what is wrong
            return image_to_rgb(msg, max_pixels)

    return convert


class LatestFrameDecoder:
    """Decodes camera frames on its own thread, newest first: the thread that decides whether to
    command the arm never waits on a decoder, and a frame that is slow to decode only makes its
    view stale (the node then holds for that reason).

    ``submit(view, item)`` replaces the view's pending frame (frames that arrive while one is
    being decoded are skipped, all but the newest); ``decode(item) -> rgb`` runs on the decoder
    thread and ``deliver(view, item, rgb, error)`` receives the result (``error``: the
    ImageConversionError text, ``rgb`` None) -- also on the decoder thread.
    """

    def __init__(self, decode: Callable[[Any], np.ndarray],
                 deliver: Callable[[str, Any, np.ndarray | None, str | None], None], name: str = "frame_decoder"):
        self._decode, self._deliver = decode, deliver
        self._pending: dict[str, Any] = {}
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, view: str, item: Any) -> None:
        with self._condition:
            self._pending[view] = item
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                view = next(iter(self._pending))
                item = self._pending.pop(view)  # the other views' frames wait their turn (FIFO by view)
            try:
                rgb, error = self._decode(item), None
            except ImageConversionError as exc:
                rgb, error = None, str(exc)
            except Exception as exc:  # noqa: BLE001 - a decoder bug must not end the thread
                rgb, error = None, f"{type(exc).__name__} while decoding: {exc}"
            try:
                self._deliver(view, item, rgb, error)
            except Exception:  # noqa: BLE001 - the receiver is closing; nothing to report to
                pass

    def close(self, timeout: float = 5.0) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout)
