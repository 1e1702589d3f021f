"""The fake camera's test image, shared by the ROS node (fake_arm.py) and the tests.

numpy only: imported by the rclpy node in .venv-ros and, by file path, by the tests in the main
environment.
"""

from __future__ import annotations

import numpy as np


def pattern_rgb(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: R = row, G = column, B = (row + 2 * column) mod 256.

    Rows, columns and channels all differ, so a transposed, flipped or channel-swapped decode
    cannot pass a pixel-exact comparison.
    """
    rows = np.arange(height, dtype=np.int64)[:, None]  # (H, 1)
    cols = np.arange(width, dtype=np.int64)[None, :]  # (1, W)
    r = np.broadcast_to(rows % 256, (height, width))
    g = np.broadcast_to(cols % 256, (height, width))
    b = (rows + 2 * cols) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)  # (H, W, 3)
