"""Conversions shared by the image-level building blocks: any `(N, C, H, W)` array or tensor in, NumPy to work on,
the caller's type, dtype and device back out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ArrayKind:
    """Where an image batch came from, so a result can be handed back in the same form."""

    is_tensor: bool
    dtype: Any
    device: Any = None


def images_to_numpy(images, name: str = "images") -> tuple[np.ndarray, ArrayKind]:
    """Returns a float64 copy of an `(N, C, H, W)` batch and how to convert results back.

    Raises:
        `ValueError`: when `images` is not 4-D, is empty, is not real-valued, or holds NaN/inf.
    """
    if torch.is_tensor(images):
        kind = ArrayKind(is_tensor=True, dtype=images.dtype, device=images.device)
        if images.is_complex() or images.dtype == torch.bool:
            raise ValueError(f"`{name}` must be a real-valued tensor, got dtype {images.dtype}.")
        array = images.detach().cpu().to(torch.float64).numpy()
    else:
        array = np.asarray(images)
        kind = ArrayKind(is_tensor=False, dtype=array.dtype)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"`{name}` must hold real numbers, got dtype {array.dtype}.")
        array = array.astype(np.float64)
    if array.ndim != 4:
        raise ValueError(f"`{name}` must have shape (N, C, H, W), got shape {tuple(array.shape)}.")
    if array.size == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(array.shape)}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite; it holds NaN or inf.")
    return array, kind


def numpy_to_kind(array: np.ndarray, kind: ArrayKind):
    """Converts a float64 result back to the input's container, dtype and device (integers are rounded)."""
    if kind.is_tensor:
        is_integer = not (kind.dtype.is_floating_point or kind.dtype.is_complex)
        if is_integer:
            array = np.rint(array)
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype=kind.dtype, device=kind.device)
    if np.issubdtype(kind.dtype, np.integer):
        array = np.rint(array)
    return array.astype(kind.dtype)
