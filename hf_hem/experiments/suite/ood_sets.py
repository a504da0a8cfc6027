"""Unknown inputs for rejection tests: synthetic far-OOD sets made from any test batch, and held-out-class splits.

Every generator takes an `(N, C, H, W)` batch (NumPy array or torch tensor) and returns a batch of the same shape,
container, dtype and device, with values inside `value_range` — by default the `(min, max)` of the input batch, so
images scaled to `[0, 1]` give unknowns in `[0, 1]`, and normalised images give unknowns in the normalised range.
All randomness comes from `seed`, so the same call returns the same set.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._arrays import ArrayKind, images_to_numpy, numpy_to_kind


SYNTHETIC_OOD_KINDS = ("uniform_noise", "pixel_permuted", "phase_randomized", "blobs")


def _batch_and_range(images, value_range) -> tuple[np.ndarray, ArrayKind, float, float]:
    """The float64 NumPy copy of a batch, how to hand results back, and the `(low, high)` range of the values to make:
    `value_range`, checked, or by default the batch's own range."""
    array, kind = images_to_numpy(images)
    if value_range is None:
        return array, kind, float(array.min()), float(array.max())
    try:
        low, high = (float(value) for value in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"`value_range` must be a (min, max) pair of numbers, got {value_range!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(f"`value_range` must be finite with min <= max, got {value_range!r}.")
    return array, kind, low, high


def uniform_noise(images, seed: int = 0, value_range: tuple[float, float] | None = None):
    """Independent uniform noise in every pixel and channel.

    Args:
        images (`np.ndarray` or `torch.Tensor`): a batch whose shape, type and range the noise copies.
        seed (`int`, defaults to 0): random seed.
        value_range (`tuple[float, float]`, *optional*): `(min, max)` of the noise; defaults to the batch's range.

    Returns:
        Same type, shape and dtype as `images`.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    array, kind, low, high = _batch_and_range(images, value_range)
    rng = np.random.default_rng(seed)
    return numpy_to_kind(rng.uniform(low, high, size=array.shape), kind)


def pixel_permuted(images, seed: int = 0, same_permutation: bool = False):
    """Shuffles the pixel positions of each image: the image's value histogram stays, its spatial structure goes.

    Each image gets its own random permutation of its `H * W` positions (unless `same_permutation`); the channels of
    a pixel move together, so colours stay colours that occur in the image. Values are only moved, so dtype and range
    are those of the input.

    Args:
        images (`np.ndarray` or `torch.Tensor`): the batch to shuffle.
        seed (`int`, defaults to 0): random seed.
        same_permutation (`bool`, defaults to `False`): use one permutation for the whole batch. A fixed permutation
            is a learnable transform; a fresh one per image is not, which makes the set a cleaner far-OOD test.

    Returns:
        Same type, shape and dtype as `images`.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    array, kind = images_to_numpy(images)
    num_images, channels, height, width = array.shape
    flat = array.reshape(num_images, channels, height * width)
    rng = np.random.default_rng(seed)
    if same_permutation:
        order = np.broadcast_to(rng.permutation(height * width), (num_images, height * width))
    else:
        order = np.argsort(rng.random((num_images, height * width)), axis=1)
    shuffled = np.take_along_axis(flat, order[:, None, :], axis=2)
    return numpy_to_kind(shuffled.reshape(array.shape), kind)


def phase_randomized(images, seed: int = 0, value_range: tuple[float, float] | None = None, clip: bool = True):
    """Keeps each image's Fourier amplitude spectrum and replaces its phase with a random one.

    The random phase is the phase of the 2-D FFT of real white noise, so it is Hermitian-symmetric and the inverse
    FFT is real (its imaginary part is rounding error and is dropped). The phase at frequency 0 is set to 0, so each
    image keeps its mean. One random phase per image is shared by its channels, which keeps the channels correlated.
    The result has the power spectrum (the second-order statistics) of the image but none of its shapes.

    Args:
        images (`np.ndarray` or `torch.Tensor`): the batch to scramble.
        seed (`int`, defaults to 0): random seed.
        value_range (`tuple[float, float]`, *optional*): range to clip to; defaults to the batch's range.
        clip (`bool`, defaults to `True`): clip to `value_range`. Scrambled images overshoot the input range a
            little; clipping keeps them valid inputs at the cost of a slightly changed spectrum.

    Returns:
        Same type, shape and dtype as `images`.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    array, kind, low, high = _batch_and_range(images, value_range)
    num_images, _, height, width = array.shape
    rng = np.random.default_rng(seed)
    amplitude = np.abs(np.fft.fft2(array, axes=(-2, -1)))
    random_phase = np.angle(np.fft.fft2(rng.standard_normal((num_images, height, width)), axes=(-2, -1)))
    random_phase[:, 0, 0] = 0.0
    scrambled = np.fft.ifft2(amplitude * np.exp(1j * random_phase[:, None]), axes=(-2, -1)).real
    if clip:
        scrambled = np.clip(scrambled, low, high)
    return numpy_to_kind(scrambled, kind)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(array: np.ndarray, sigma: float, mode: str = "reflect") -> np.ndarray:
    """Separable Gaussian smoothing over the last two axes (NumPy only).

    Args:
        array (`np.ndarray`): `(..., H, W)` values.
        sigma (`float`): standard deviation in pixels; `0` returns a copy.
        mode (`str`, defaults to `"reflect"`): `np.pad` mode for the borders (`"reflect"`, `"wrap"`, `"edge"`).

    Returns:
        `np.ndarray` of the same shape, float64.
    """
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"`sigma` must be a finite number >= 0, got {sigma!r}.")
    array = np.asarray(array, dtype=np.float64)
    if sigma == 0:
        return array.copy()
    kernel = _gaussian_kernel(sigma)
    radius = kernel.size // 2
    for axis in (-2, -1):
        pad = [(0, 0)] * array.ndim
        pad[axis] = (radius, radius)
        # np.pad's reflect needs radius < size; fall back to edge padding for tiny images.
        pad_mode = mode if (mode != "reflect" or radius < array.shape[axis]) else "edge"
        padded = np.moveaxis(np.pad(array, pad, mode=pad_mode), axis, -1)
        windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.size, axis=-1)
        array = np.moveaxis(windows @ kernel, -1, axis)
    return array


def blobs(
    images,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    density: float = 0.7,
    sigma: float | None = None,
    threshold: float = 0.75,
):
    """Amorphous binary shapes with sharp edges: smoothed Bernoulli noise, thresholded.

    Each channel of each image starts as Bernoulli(`density`) noise, is Gaussian-smoothed (with wrap-around borders)
    and thresholded at `threshold`; pixels above it take the top of `value_range`, the rest the bottom.

    Args:
        images (`np.ndarray` or `torch.Tensor`): a batch whose shape, type and range the blobs copy.
        seed (`int`, defaults to 0): random seed.
        value_range (`tuple[float, float]`, *optional*): `(background, foreground)`; defaults to the batch's range.
        density (`float`, defaults to 0.7): probability of a 1 in the noise, in `(0, 1)`.
        sigma (`float`, *optional*): smoothing in pixels; defaults to `max(1, min(H, W) / 32)`, so blob sizes
            scale with the image.
        threshold (`float`, defaults to 0.75): smoothed density above which a pixel is foreground, in `(0, 1)`.

    Returns:
        Same type, shape and dtype as `images`.

    Shape:
        - images: `(N, C, H, W)`; output: `(N, C, H, W)`.
    """
    array, kind, low, high = _batch_and_range(images, value_range)
    if not 0 < density < 1:
        raise ValueError(f"`density` must be in (0, 1), got {density!r}.")
    if not 0 < threshold < 1:
        raise ValueError(f"`threshold` must be in (0, 1), got {threshold!r}.")
    height, width = array.shape[-2:]
    sigma = max(1.0, min(height, width) / 32) if sigma is None else sigma
    rng = np.random.default_rng(seed)
    noise = (rng.random(array.shape) < density).astype(np.float64)
    foreground = gaussian_smooth(noise, sigma, mode="wrap") > threshold
    return numpy_to_kind(np.where(foreground, high, low), kind)


def natural_image_patches(num_patches: int, image_size: int, num_channels: int = 1, seed: int = 0) -> np.ndarray:
    """Random crops of scikit-learn's two bundled photographs, an offline "real images from elsewhere" OOD set.

    Args:
        num_patches (`int`): how many patches.
        image_size (`int`): side of the square output; crops of 2-4x that side are resized down to it.
        num_channels (`int`, defaults to 1): 1 (grayscale) or 3 (RGB).
        seed (`int`, defaults to 0): random seed.

    Returns:
        `np.ndarray` of shape `(num_patches, num_channels, image_size, image_size)`, float32 in `[0, 1]`.
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images

    if num_patches < 1 or image_size < 1:
        raise ValueError(f"`num_patches` and `image_size` must be >= 1, got {num_patches} and {image_size}.")
    if num_channels not in (1, 3):
        raise ValueError(f"`num_channels` must be 1 or 3, got {num_channels}.")
    photos = [Image.fromarray(photo) for photo in load_sample_images().images]
    rng = np.random.default_rng(seed)
    patches = np.empty((num_patches, num_channels, image_size, image_size), dtype=np.float32)
    for index in range(num_patches):
        photo = photos[rng.integers(len(photos))]
        side = int(min(rng.integers(2 * image_size, 4 * image_size + 1), *photo.size))
        left = rng.integers(photo.size[0] - side + 1)
        top = rng.integers(photo.size[1] - side + 1)
        crop = photo.crop((left, top, left + side, top + side)).convert("L" if num_channels == 1 else "RGB")
        pixels = np.asarray(crop.resize((image_size, image_size), Image.BILINEAR), dtype=np.float32) / 255.0
        patches[index] = pixels[None] if num_channels == 1 else pixels.transpose(2, 0, 1)
    return patches


_GENERATORS = {
    "uniform_noise": uniform_noise,
    "pixel_permuted": pixel_permuted,
    "phase_randomized": phase_randomized,
    "blobs": blobs,
}


def synthetic_ood_sets(images, kinds=SYNTHETIC_OOD_KINDS, seed: int = 0) -> dict:
    """All requested synthetic far-OOD sets made from one test batch.

    Args:
        images (`np.ndarray` or `torch.Tensor`): `(N, C, H, W)` test images of the known classes.
        kinds (`Sequence[str]`, defaults to all of `SYNTHETIC_OOD_KINDS`): which sets to build.
        seed (`int`, defaults to 0): random seed; each kind uses `seed` plus its position in `SYNTHETIC_OOD_KINDS`
            so sets are independent of each other and of which other kinds were asked for.

    Returns:
        `dict[str, array]`: kind -> batch shaped like `images`.
    """
    unknown = [kind for kind in kinds if kind not in _GENERATORS]
    if unknown:
        raise ValueError(f"unknown synthetic OOD kinds {unknown}; valid kinds are {list(SYNTHETIC_OOD_KINDS)}.")
    return {kind: _GENERATORS[kind](images, seed=seed + SYNTHETIC_OOD_KINDS.index(kind)) for kind in kinds}


class KnownUnknownSplit(NamedTuple):
    """Result of [`split_known_unknown`]."""

    known_indices: np.ndarray
    """Positions of samples of known classes, ascending."""
    unknown_indices: np.ndarray
    """Positions of samples of held-out classes, ascending."""
    known_labels: np.ndarray
    """Remapped labels `0..K-1` of the known samples, aligned with `known_indices`."""
    class_map: dict
    """Original class id -> new id, for the known classes (in ascending order of the original ids)."""


def split_known_unknown(labels, unknown_classes) -> KnownUnknownSplit:
    """Splits samples into known classes (relabelled `0..K-1`) and held-out unknown classes.

    Args:
        labels (array-like of `int`): class id per sample, shape `(N,)`.
        unknown_classes (`Iterable[int]`): classes to hold out; each must occur in `labels`.

    Returns:
        [`KnownUnknownSplit`].

    Example:

    ```python
    >>> split = split_known_unknown([3, 1, 2, 3], unknown_classes=[2])
    >>> split.known_indices, split.known_labels, split.class_map
    (array([0, 1, 3]), array([1, 0, 1]), {1: 0, 3: 1})
    ```
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be a 1-D array of integers, got shape {labels.shape}, dtype {labels.dtype}.")
    unknown = np.unique(np.asarray(list(unknown_classes), dtype=np.int64))
    present = np.unique(labels)
    missing = np.setdiff1d(unknown, present)
    if missing.size:
        raise ValueError(f"unknown_classes {missing.tolist()} do not occur in labels (classes: {present.tolist()}).")
    known_classes = np.setdiff1d(present, unknown)
    if known_classes.size == 0:
        raise ValueError(f"unknown_classes {unknown.tolist()} hold out every class; at least one must stay known.")
    is_unknown = np.isin(labels, unknown)
    known_indices = np.flatnonzero(~is_unknown)
    class_map = {int(original): new for new, original in enumerate(known_classes)}
    known_labels = np.searchsorted(known_classes, labels[known_indices])
    return KnownUnknownSplit(known_indices, np.flatnonzero(is_unknown), known_labels, class_map)
