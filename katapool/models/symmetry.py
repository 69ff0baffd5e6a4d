"""KataGo's eight board symmetries, as the engine applies them to network inputs.

Bit 1 flips rows (y), bit 2 flips columns (x), bit 4 transposes — the flips first, then the
transpose; outputs go back through the inverse (transpose first, then the flips). Checked
against the engine's own `kata-raw-nn S` for all eight (tests/test_model_onnx.py).
"""

from __future__ import annotations

import numpy as np

SYMMETRIES = range(8)


def apply_symmetry(planes: np.ndarray, symmetry: int) -> np.ndarray:
    """``planes`` [..., H, W] as the network sees them under ``symmetry``."""
    out = planes
    if symmetry & 1:
        out = out[..., ::-1, :]
    if symmetry & 2:
        out = out[..., :, ::-1]
    if symmetry & 4:
        out = np.swapaxes(out, -1, -2)
    return np.ascontiguousarray(out)


def invert_symmetry(planes: np.ndarray, symmetry: int) -> np.ndarray:
    """Output planes [..., H, W] computed under ``symmetry``, back on the real board."""
    out = planes
    if symmetry & 4:
        out = np.swapaxes(out, -1, -2)
    if symmetry & 2:
        out = out[..., :, ::-1]
    if symmetry & 1:
        out = out[..., ::-1, :]
    return np.ascontiguousarray(out)
