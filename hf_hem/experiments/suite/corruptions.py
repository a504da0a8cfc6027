"""Common image corruptions at severities 1-5, in NumPy and PIL: Gaussian noise, Gaussian blur, contrast, JPEG.

Inputs are `(N, C, H, W)` float batches (NumPy or torch) with values in `[0, 1]`; outputs have the same shape,
container and dtype, clipped to `[0, 1]`. Severity 0 returns an unchanged copy. The severity tables follow the spirit
of CIFAR-10-C (Hendrycks & Dietterich, 2019) but are tuned for small images (8-32 px), where a blur of a few pixels
already erases a digit.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from ._arrays import images_to_numpy, numpy_to_kind
from .ood_sets import gaussian_smooth


# One parameter per severity 1..5.
NOISE_STD = (0.04, 0.08, 0.12, 0.18, 0.26)
"""Standard deviation of the additive Gaussian noise."""
BLUR_SIGMA_FRACTION = (0.02, 0.035, 0.05, 0.07, 0.09)
"""Blur standard deviation as a fraction of the image side (0.64 to 2.9 px on 32x32 images)."""
CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
"""Factor that scales each channel's deviation from its mean."""
JPEG_QUALITY = (80, 60, 40, 25, 10)
"""PIL JPEG quality."""

MAX_SEVERITY = 5


def _prepare(images, severity):
    array, kind = images_to_numpy(images)
    if not isinstance(severity, (int, np.integer)) or not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"`severity` must be an integer in [0, {MAX_SEVERITY}], got {severity!r}.")
    if array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError(
            f"corruptions expect images scaled to [0, 1]; got values in [{array.min():.4g}, {array.max():.4g}]."
        )
    return np.clip(array, 0.0, 1.0), kind


def _corruption(transform):
    """Makes a public corruption of `transform(images, severity, seed)`, which corrupts a checked float64 NumPy batch
    in `[0, 1]` at a severity of 1 to 5: the wrapper takes any batch, returns severity 0 as an unchanged copy and
    hands the result back in the input's container and dtype (so each corruption holds only its own arithmetic)."""

    @functools.wraps(transform)
    def corruption(images, severity: int, seed: int = 0):
        array, kind = _prepare(images, severity)
        if severity == 0:
            return numpy_to_kind(array, kind)
        return numpy_to_kind(transform(array, severity, seed), kind)

    return corruption


@_corruption
def gaussian_noise(images, severity: int, seed: int = 0):
    """Adds zero-mean Gaussian noise with standard deviation `NOISE_STD[severity - 1]`, then clips to `[0, 1]`.

    Args:
        images (`np.ndarray` or `torch.Tensor`): float images in `[0, 1]`.
        severity (`int`): 0 (unchanged) to 5.
        seed (`int`, defaults to 0): random seed of the noise.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    noise = np.random.default_rng(seed).standard_normal(images.shape) * NOISE_STD[severity - 1]
    return np.clip(images + noise, 0.0, 1.0)


@_corruption
def gaussian_blur(images, severity: int, seed: int = 0):
    """Separable Gaussian blur (reflected borders) with standard deviation `BLUR_SIGMA_FRACTION * min(H, W)`.

    Args:
        images (`np.ndarray` or `torch.Tensor`): float images in `[0, 1]`.
        severity (`int`): 0 (unchanged) to 5.
        seed (`int`, defaults to 0): unused (the blur is deterministic); accepted so all corruptions share a signature.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    sigma = BLUR_SIGMA_FRACTION[severity - 1] * min(images.shape[-2:])
    return np.clip(gaussian_smooth(images, sigma, mode="reflect"), 0.0, 1.0)


@_corruption
def contrast(images, severity: int, seed: int = 0):
    """Shrinks each image channel towards its mean: `(x - mean) * CONTRAST_FACTOR[severity - 1] + mean`.

    Args:
        images (`np.ndarray` or `torch.Tensor`): float images in `[0, 1]`.
        severity (`int`): 0 (unchanged) to 5.
        seed (`int`, defaults to 0): unused; accepted so all corruptions share a signature.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    mean = images.mean(axis=(-2, -1), keepdims=True)
    return (images - mean) * CONTRAST_FACTOR[severity - 1] + mean


@_corruption
def jpeg_compression(images, severity: int, seed: int = 0):
    """Round trip through PIL's JPEG encoder at quality `JPEG_QUALITY[severity - 1]`.

    Images are quantised to uint8 (`round(255 * x)`) first; 1- and 3-channel images are encoded as grayscale / RGB,
    other channel counts one channel at a time.

    Args:
        images (`np.ndarray` or `torch.Tensor`): float images in `[0, 1]`.
        severity (`int`): 0 (unchanged, no quantisation) to 5.
        seed (`int`, defaults to 0): unused; accepted so all corruptions share a signature.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    from PIL import Image

    quality = JPEG_QUALITY[severity - 1]
    pixels = np.rint(images * 255).astype(np.uint8)
    channels = images.shape[1]
    # Groups of channels encoded together: all three for RGB, otherwise one at a time.
    groups = [slice(0, 3)] if channels == 3 else [slice(index, index + 1) for index in range(channels)]
    decoded = np.empty_like(pixels)
    for image_index in range(pixels.shape[0]):
        for group in groups:
            plane = pixels[image_index, group].transpose(1, 2, 0)
            plane = plane[..., 0] if plane.shape[-1] == 1 else plane
            buffer = io.BytesIO()
            Image.fromarray(plane).save(buffer, format="JPEG", quality=quality)
            buffer.seek(0)
            restored = np.asarray(Image.open(buffer))
            decoded[image_index, group] = restored[None] if restored.ndim == 2 else restored.transpose(2, 0, 1)
    return decoded.astype(np.float64) / 255.0


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "jpeg_compression": jpeg_compression,
}


def corrupt(images, corruption: str, severity: int, seed: int = 0):
    """Applies the corruption named `corruption` (a key of `CORRUPTIONS`) at `severity` 0-5.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; valid names are {list(CORRUPTIONS)}.")
    return CORRUPTIONS[corruption](images, severity, seed=seed)
