"""Native ALE frames (210x160 RGB) -> square dataset images.

INTER_AREA is the antialiasing choice: it averages the source pixels under each target pixel, so a 1-px sprite fades
instead of vanishing or aliasing. It is also what ale-py's vector env uses internally (measured: byte-identical to
`cv2.resize(..., INTER_AREA)`), so cropped (resized here) and uncropped (resized in C++) data look the same.
Measured on the shared 2-core machine, one 210x160 frame to 64x64: cv2 INTER_AREA 240 us, PIL BOX 317 us,
PIL LANCZOS 972 us.
"""
from __future__ import annotations

import cv2
import numpy as np

# One small frame at a time: OpenCV's worker threads only add hand-off cost (and fight the collector's processes).
cv2.setNumThreads(1)

NATIVE_H, NATIVE_W = 210, 160


def crop_resize(frame: np.ndarray, resolution: int, crop: list[int] | None) -> np.ndarray:
    """(210, 160, 3) uint8 -> (R, R, 3) uint8; `crop` = [top, left, height, width] in native pixels or None."""
    if crop is not None:
        top, left, h, w = crop
        frame = frame[top : top + h, left : left + w]
    if frame.shape[0] == resolution and frame.shape[1] == resolution:
        return np.ascontiguousarray(frame)
    return cv2.resize(frame, (resolution, resolution), interpolation=cv2.INTER_AREA)
