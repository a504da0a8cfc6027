"""NumPy/PIL image transforms for `datasets.Dataset.set_transform`, without torchvision.

Two families:

* classification: a random resized crop (plus an optional horizontal flip) for training, a resize and centre crop
  for evaluation, then the image processor's rescaling and normalisation;
* semantic segmentation: paired image/mask augmentation (random scale, random crop padded with the ignore index,
  horizontal flip) with bilinear resizing for images and nearest-neighbour resizing for masks, ADE20K-style
  `reduce_labels`, and checks that name the offending example.

Both return callables mapping a batch `{column: [values]}` to `{"pixel_values": [(C, H, W) float32 arrays],
"labels": [...]}`, ready for [`collate_fn`] or `transformers.default_data_collator`. Because they drop the raw
columns, train with `TrainingArguments(remove_unused_columns=False)`, as the transformers examples do.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import torch


__all__ = [
    "ClassificationTransform",
    "ImageSettings",
    "SegmentationTransform",
    "UndecodableImageError",
    "build_classification_transforms",
    "build_segmentation_transforms",
    "check_label_values",
    "collate_fn",
    "decode_image",
    "decode_mask",
    "random_resized_crop_box",
    "reduce_labels",
    "resolve_image_settings",
]

# ViT's defaults, used when neither an image processor nor explicit statistics are given.
DEFAULT_IMAGE_MEAN = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_STD = (0.5, 0.5, 0.5)

_PIL_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, PIL.Image.DecompressionBombError)


class UndecodableImageError(ValueError):
    """An image or mask whose bytes or file PIL cannot decode; the message names the file and the example."""


# --------------------------------------------------------------------------------------------------------------------
# Settings from an image processor


class ImageSettings:
    """Output size and normalisation statistics shared by the transforms.

    Args:
        height (`int`), width (`int`): Output size. With `shortest_edge=True`, `height == width` and evaluation
            resizes the shorter side to it before centre-cropping a square (the image processors' `shortest_edge`).
        image_mean (`Sequence[float]`), image_std (`Sequence[float]`): Per-channel statistics; their length (1 or 3)
            decides whether images are converted to mode `"L"` or `"RGB"`.
        rescale_factor (`float`, *optional*, defaults to 1/255): Applied to the 0..255 pixel values before
            normalising.
        shortest_edge (`bool`, *optional*, defaults to `False`): See `height`.
        crop_pct (`float`, *optional*): ConvNeXt's (and ResNet's) evaluation crop: below 384 pixels the shorter side
            is resized to `int(size / crop_pct)` before the centre crop; at 384 or more the image is warped to the
            output size. `None` resizes the shorter side straight to the output size.
        resample (`int`, *optional*, defaults to `PIL.Image.BILINEAR`): PIL filter for resizing images (ViT and
            SegFormer processors use bilinear, ConvNeXt bicubic). Masks are always resized with nearest neighbour.
    """

    def __init__(
        self,
        height: int,
        width: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        rescale_factor: float = 1 / 255,
        shortest_edge: bool = False,
        crop_pct: float | None = None,
        resample: int = PIL.Image.BILINEAR,
    ):
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        mean = np.asarray(image_mean, dtype=np.float32).reshape(-1)
        std = np.asarray(image_std, dtype=np.float32).reshape(-1)
        if mean.size not in (1, 3) or std.size != mean.size:
            raise ValueError(
                f"image_mean and image_std must both have 1 or 3 entries, got {list(image_mean)} and {list(image_std)}."
            )
        if not np.all(std > 0):
            raise ValueError(f"image_std entries must be > 0, got {list(image_std)}.")
        if not math.isfinite(rescale_factor) or rescale_factor <= 0:
            raise ValueError(f"rescale_factor must be a finite number > 0, got {rescale_factor!r}.")
        self.height, self.width = int(height), int(width)
        self.mean, self.std = mean, std
        self.rescale_factor = float(rescale_factor)
        self.shortest_edge = bool(shortest_edge)
        if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}.")
        self.crop_pct = None if crop_pct is None else float(crop_pct)
        try:
            self.resample = PIL.Image.Resampling(int(resample))
        except (TypeError, ValueError) as error:
            raise ValueError(f"resample must be a PIL resampling filter, got {resample!r}.") from error
        self.mode = "RGB" if mean.size == 3 else "L"

    def __repr__(self) -> str:
        return (
            f"ImageSettings(height={self.height}, width={self.width}, image_mean={self.mean.tolist()}, "
            f"image_std={self.std.tolist()}, rescale_factor={self.rescale_factor}, shortest_edge={self.shortest_edge}, "
            f"crop_pct={self.crop_pct}, resample={self.resample.name})"
        )

    def to_pixel_values(self, image: PIL.Image.Image) -> np.ndarray:
        """Rescale and normalise a PIL image (already at its output size) into a `(C, H, W)` float32 array."""
        array = np.asarray(image.convert(self.mode) if image.mode != self.mode else image, dtype=np.float32)
        if array.ndim == 2:
            array = array[:, :, None]
        array = (array * self.rescale_factor - self.mean) / self.std
        return np.ascontiguousarray(array.transpose(2, 0, 1))


def _size_field(size, key: str):
    # transformers 5 image processors hold `size` as a `SizeDict` (attributes); older ones and configs as a dict.
    if isinstance(size, Mapping):
        return size.get(key)
    return getattr(size, key, None)


def resolve_image_settings(image_processor=None, size=None, image_mean=None, image_std=None) -> ImageSettings:
    """Output size and normalisation from an image processor, explicit values, or both (explicit values win).

    Args:
        image_processor (`transformers.BaseImageProcessor`, *optional*): Source of `size`, `image_mean`,
            `image_std`, `do_normalize`, `do_rescale` and `rescale_factor`.
        size (`int`, `(height, width)`, or `dict`, *optional*): An `int` is a square; a dict may hold
            `height`/`width` or `shortest_edge`, as image processors do.
        image_mean (`Sequence[float]`, *optional*), image_std (`Sequence[float]`, *optional*): Normalisation.

    Returns:
        [`ImageSettings`].
    """
    if size is None and image_processor is not None:
        size = getattr(image_processor, "size", None)
    if size is None:
        raise ValueError("Pass `size` (an int, (height, width) or a dict) or an image processor with a `size`.")
    shortest_edge = False
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        height = width = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        height, width = size
    elif _size_field(size, "height") is not None and _size_field(size, "width") is not None:
        height, width = _size_field(size, "height"), _size_field(size, "width")
    elif _size_field(size, "shortest_edge") is not None:
        height = width = _size_field(size, "shortest_edge")
        shortest_edge = True
    else:
        raise ValueError(
            f"size must be an int, a (height, width) pair, or a dict with 'height' and 'width' or 'shortest_edge'; "
            f"got {size!r}."
        )
    do_normalize = getattr(image_processor, "do_normalize", True) if image_processor is not None else True
    if image_mean is None:
        image_mean = getattr(image_processor, "image_mean", None) if do_normalize else None
        image_mean = DEFAULT_IMAGE_MEAN if image_mean is None and do_normalize else image_mean
    if image_std is None:
        image_std = getattr(image_processor, "image_std", None) if do_normalize else None
        image_std = DEFAULT_IMAGE_STD if image_std is None and do_normalize else image_std
    if image_mean is None:  # do_normalize=False: identity statistics
        image_mean, image_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    rescale_factor = 1 / 255
    if image_processor is not None:
        rescale_factor = getattr(image_processor, "rescale_factor", rescale_factor)
        if not getattr(image_processor, "do_rescale", True):
            rescale_factor = 1.0
    crop_pct = getattr(image_processor, "crop_pct", None) if shortest_edge else None
    resample = getattr(image_processor, "resample", None)
    resample = PIL.Image.BILINEAR if resample is None else resample
    return ImageSettings(height, width, image_mean, image_std, rescale_factor, shortest_edge, crop_pct, resample)


# --------------------------------------------------------------------------------------------------------------------
# Decoding


def _describe(example: str | None, path: str | None) -> str:
    where = example or "an example"
    return f"{where} ({path})" if path else where


def _source(value) -> tuple[bytes | None, str | None]:
    if isinstance(value, Mapping):  # datasets.Image(decode=False) storage: {"bytes": ..., "path": ...}
        return value.get("bytes"), value.get("path")
    if isinstance(value, (str, os.PathLike)):
        return None, os.fspath(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    raise TypeError(
        f"expected a PIL image, a NumPy array, a path, bytes, or a {{'bytes', 'path'}} dict, got {type(value).__name__}."
    )


def decode_image(value, example: str | None = None) -> PIL.Image.Image:
    """Open an image from whatever a `datasets` column holds, naming the file when PIL cannot decode it.

    Args:
        value (`PIL.Image.Image`, `str`, `bytes`, or `dict`): A decoded image, a path, encoded bytes, or the
            `{"bytes", "path"}` dict of a `datasets.Image(decode=False)` column.
        example (`str`, *optional*): How to name the example in error messages, e.g. `"example 17"`.

    Returns:
        `PIL.Image.Image`, fully loaded. Unlike `datasets.Image`, EXIF orientation is *not* applied: masks are drawn
        on the stored pixel grid, so rotating only the photo would misalign the pair.

    Raises:
        [`UndecodableImageError`]: the bytes or file are missing, truncated or not an image.
    """
    if isinstance(value, PIL.Image.Image):
        return value
    data, path = _source(value)
    try:
        if data is None and path is None:
            raise ValueError("the value holds neither bytes nor a path")
        image = PIL.Image.open(io.BytesIO(data) if data is not None else path)
        image.load()
    except _PIL_DECODE_ERRORS as error:
        raise UndecodableImageError(f"cannot decode the image of {_describe(example, path)}: {error}") from error
    return image


_MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L")


def decode_mask(value, example: str | None = None) -> np.ndarray:
    """A segmentation mask as a 2-D integer array of class ids.

    Palette (`"P"`) masks give their palette indices, which are the class ids; they are never converted to grey
    levels.

    Args:
        value: Anything [`decode_image`] accepts, or a 2-D NumPy array.
        example (`str`, *optional*): How to name the example in error messages.

    Returns:
        `np.ndarray` of shape `(H, W)`, `uint8` for 8-bit masks.

    Raises:
        [`UndecodableImageError`]: the mask cannot be decoded.
        `ValueError`: the mask has colour channels (mode `RGB`, …) or is not 2-D.
    """
    if isinstance(value, np.ndarray):
        array = value[..., 0] if value.ndim == 3 and value.shape[-1] == 1 else value
    else:
        image = decode_image(value, example)
        if image.mode not in _MASK_MODES:
            path = _source(value)[1] if not isinstance(value, PIL.Image.Image) else getattr(image, "filename", None)
            raise ValueError(
                f"the mask of {_describe(example, path)} has mode {image.mode!r}; expected a single-channel label map "
                f"(mode 'L', 'P', 'I;16' or 'I') whose pixel values are class ids."
            )
        array = np.asarray(image)
        if array.dtype == bool:
            array = array.astype(np.uint8)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"the mask of {_describe(example, None)} must be a 2-D integer array, got shape {array.shape} "
            f"and dtype {array.dtype}."
        )
    return array


# --------------------------------------------------------------------------------------------------------------------
# Label handling


def reduce_labels(mask, ignore_index: int = 255) -> np.ndarray:
    """ADE20K's label reduction: background 0 becomes `ignore_index` and every other class id moves down by one.

    A pixel that already holds `ignore_index` keeps it (in the transformers recipe `255 - 1 = 254` is mapped back
    to 255). With `ignore_index=255`, `0 -> 255`, `1 -> 0`, …, `150 -> 149`, `255 -> 255`.

    Args:
        mask (`np.ndarray` or `PIL.Image.Image`): Integer class ids, shape `(H, W)`.
        ignore_index (`int`, *optional*, defaults to 255): Value of ignored pixels, in and out.

    Returns:
        `np.ndarray`: a new array, same shape and dtype (widened only if `ignore_index` does not fit the dtype).
    """
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"reduce_labels expects integer class ids, got dtype {mask.dtype}.")
    info = np.iinfo(mask.dtype)
    reduced = mask.copy() if info.min <= ignore_index <= info.max else mask.astype(np.int64)
    background = mask == 0
    ignored = mask == ignore_index
    reduced[~(background | ignored)] -= 1
    reduced[background] = ignore_index
    return reduced


def check_label_values(mask: np.ndarray, num_labels: int, ignore_index: int | None = 255, example: str | None = None):
    """Raise if `mask` holds class ids outside `0 .. num_labels - 1` that are not the ignore index.

    Args:
        mask (`np.ndarray`): Class ids after any label reduction.
        num_labels (`int`): Number of classes of the model.
        ignore_index (`int`, *optional*, defaults to 255): Allowed out-of-range value; `None` allows none.
        example (`str`, *optional*): How to name the example in the message.

    Raises:
        `ValueError`: listing every offending value found.
    """
    invalid = (mask < 0) | (mask >= num_labels)
    if ignore_index is not None:
        invalid &= mask != ignore_index
    if invalid.any():
        values = np.unique(mask[invalid]).tolist()
        raise ValueError(
            f"the mask of {example or 'an example'} has label values {values} outside 0..{num_labels - 1} that are "
            f"not the ignore index {ignore_index}. Check num_labels, or whether the labels need do_reduce_labels."
        )


# --------------------------------------------------------------------------------------------------------------------
# Randomness


class _WorkerAwareRng:
    """A NumPy generator that forks correctly into DataLoader workers.

    A generator built once and copied into every worker would give each worker the same augmentations. This one is
    rebuilt whenever it is used in a new worker, seeded from `seed` and the worker's seed (which the DataLoader
    derives from torch's seed, so a seeded run stays reproducible).
    """

    def __init__(self, seed: int | None):
        self.seed = seed
        self._owner = None
        self._generator = None

    def __getstate__(self):
        return {"seed": self.seed, "_owner": None, "_generator": None}

    def get(self) -> np.random.Generator:
        worker = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if worker is None else worker.seed)
        if owner != self._owner:
            if self.seed is None:
                entropy = None  # fresh OS entropy in every process
            elif worker is None:
                entropy = self.seed
            else:
                entropy = [self.seed, worker.seed % 2**63]
            self._generator = np.random.default_rng(entropy)
            self._owner = owner
        return self._generator


# --------------------------------------------------------------------------------------------------------------------
# Classification


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """Pick a crop covering a random share `scale` of the image area with a random aspect ratio in `ratio`.

    Aspect ratios are drawn uniformly in log space. After 10 failed draws (crops that do not fit) it falls back to
    the largest centred crop whose aspect ratio is within `ratio`.

    Args:
        width (`int`), height (`int`): Image size.
        scale (`tuple[float, float]`): Range of the crop area relative to the image area.
        ratio (`tuple[float, float]`): Range of the crop's width / height.
        rng (`np.random.Generator`): Source of randomness.

    Returns:
        `(left, top, crop_width, crop_height)`.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left = int(rng.integers(0, width - crop_width + 1))
            top = int(rng.integers(0, height - crop_height + 1))
            return left, top, crop_width, crop_height
    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_width, crop_height = width, max(1, round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        crop_width, crop_height = max(1, round(height * ratio[1])), height
    else:
        crop_width, crop_height = width, height
    return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height


def _check_range(name: str, value, lower_bound: float, upper_bound: float = math.inf) -> tuple[float, float]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not lower_bound < value[0] <= value[1] <= upper_bound
    ):
        raise ValueError(
            f"{name} must be a (low, high) pair with {lower_bound} < low <= high <= {upper_bound}; got {value!r}."
        )
    return float(value[0]), float(value[1])


def _column(batch: Mapping, column: str, role: str) -> list:
    if column not in batch:
        raise ValueError(
            f"the batch has no {role} column {column!r}; its columns are {sorted(batch)}. Pass the right column name."
        )
    return batch[column]


class ClassificationTransform:
    """Batch transform for image classification; build it with [`build_classification_transforms`].

    Training: random resized crop to the output size, optional horizontal flip. Evaluation: resize (the shorter side
    for `shortest_edge` settings, then a centre crop; else both sides) exactly as the image processors do. Then
    rescaling and normalisation.
    """

    def __init__(
        self,
        settings: ImageSettings,
        train: bool,
        image_column: str = "image",
        label_column: str | None = "label",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        horizontal_flip: bool = True,
        seed: int | None = None,
    ):
        self.settings = settings
        self.train = bool(train)
        self.image_column = image_column
        self.label_column = label_column
        self.crop_scale = _check_range("crop_scale", crop_scale, 0.0, 1.0)
        self.crop_ratio = _check_range("crop_ratio", crop_ratio, 0.0)
        self.horizontal_flip = bool(horizontal_flip)
        self._rng = _WorkerAwareRng(seed)

    def transform_image(self, image: PIL.Image.Image) -> np.ndarray:
        """One PIL image to `(C, H, W)` float32 pixel values."""
        settings = self.settings
        output_size = (settings.width, settings.height)
        if image.mode != settings.mode:  # before resizing: palette images cannot be resized bilinearly
            image = image.convert(settings.mode)
        width, height = image.size
        if self.train:
            rng = self._rng.get()
            left, top, crop_width, crop_height = random_resized_crop_box(
                width, height, self.crop_scale, self.crop_ratio, rng
            )
            box = (left, top, left + crop_width, top + crop_height)
            image = image.resize(output_size, settings.resample, box=box)
            if self.horizontal_flip and rng.random() < 0.5:
                image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        elif settings.shortest_edge and not (settings.crop_pct is not None and settings.height >= 384):
            # Same two steps and rounding as the transformers image processors, so evaluation inputs match theirs.
            side = settings.height
            resized_short = int(side / settings.crop_pct) if settings.crop_pct is not None else side
            short, long = sorted((width, height))
            resized_long = int(resized_short * long / short)
            new_size = (resized_short, resized_long) if width <= height else (resized_long, resized_short)
            image = image.resize(new_size, settings.resample)
            left, top = (new_size[0] - side) // 2, (new_size[1] - side) // 2
            image = image.crop((left, top, left + side, top + side))
        else:
            image = image.resize(output_size, settings.resample)
        return settings.to_pixel_values(image)

    def __call__(self, batch: Mapping) -> dict:
        images = _column(batch, self.image_column, "image")
        output = {
            "pixel_values": [
                self.transform_image(decode_image(image, f"example {position} of the batch"))
                for position, image in enumerate(images)
            ]
        }
        if self.label_column is not None and self.label_column in batch:
            output["labels"] = list(batch[self.label_column])
        return output


def build_classification_transforms(
    image_processor=None,
    *,
    train: bool,
    size=None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    **transform_kwargs,
) -> ClassificationTransform:
    """A batch transform for `dataset.set_transform` in image classification.

    It reproduces the transformers example's torchvision pipeline with PIL and NumPy: `RandomResizedCrop` +
    `RandomHorizontalFlip` for training, `Resize` + `CenterCrop` for evaluation, then `Normalize` with the image
    processor's statistics. The arguments after `image_std` are the keyword arguments of
    [`ClassificationTransform`], with its defaults.

    Args:
        image_processor (`transformers.BaseImageProcessor`, *optional*): Gives the size and statistics.
        train (`bool`): Random augmentation (`True`) or the deterministic evaluation path (`False`).
        size (`int`, `(height, width)` or `dict`, *optional*): Output size; overrides the processor's.
        image_mean (`Sequence[float]`, *optional*), image_std (`Sequence[float]`, *optional*): Override the
            processor's statistics. Their length (3 or 1) picks RGB or greyscale input.
        image_column (`str`, *optional*, defaults to `"image"`): Column holding the images.
        label_column (`str`, *optional*, defaults to `"label"`): Column copied to `labels`; `None` for none.
        crop_scale (`tuple[float, float]`, *optional*, defaults to `(0.08, 1.0)`): Area range of the random crop.
            Small objects such as digits train better with a milder range, e.g. `(0.5, 1.0)`.
        crop_ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`): Aspect-ratio range of the crop.
        horizontal_flip (`bool`, *optional*, defaults to `True`): Flip half of the training images. Set `False` for
            data whose meaning changes under mirroring (digits, text).
        seed (`int`, *optional*): Makes the augmentation reproducible; each DataLoader worker gets its own stream.

    Returns:
        [`ClassificationTransform`]: maps `{image_column: [...], label_column: [...]}` to
        `{"pixel_values": [np.ndarray (C, H, W) float32], "labels": [...]}`.

    Example:

    ```python
    >>> from hf_hem.data import build_classification_transforms, collate_fn, load_digits_dataset
    >>> digits = load_digits_dataset()
    >>> digits["train"].set_transform(build_classification_transforms(size=32, train=True, horizontal_flip=False))
    >>> batch = collate_fn([digits["train"][0], digits["train"][1]])
    >>> batch["pixel_values"].shape, batch["labels"].dtype
    (torch.Size([2, 3, 32, 32]), torch.int64)
    ```
    """
    settings = resolve_image_settings(image_processor, size=size, image_mean=image_mean, image_std=image_std)
    return ClassificationTransform(settings, train=train, **transform_kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Segmentation


def _resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize sampling source pixel centres, for any integer dtype (PIL has no 16/32-bit NEAREST
    for every mode)."""
    source_height, source_width = mask.shape
    if (source_height, source_width) == (height, width):
        return mask
    rows = np.minimum(((np.arange(height) + 0.5) * (source_height / height)).astype(np.intp), source_height - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (source_width / width)).astype(np.intp), source_width - 1)
    return mask[rows[:, None], cols[None, :]]


class SegmentationTransform:
    """Paired image/mask batch transform for semantic segmentation; build it with [`build_segmentation_transforms`].

    Per example: decode (naming the file on failure, or skipping it with `skip_bad`), check that image and mask
    have the same size, optionally reduce labels, check label values, then augment or resize and normalise.

    Attributes:
        num_skipped (`int`): Examples skipped as undecodable by this instance (per process: each DataLoader worker
            holds its own copy).
    """

    def __init__(
        self,
        settings: ImageSettings,
        train: bool,
        num_labels: int | None = None,
        do_reduce_labels: bool = False,
        ignore_index: int = 255,
        scale_range: tuple[float, float] = (0.5, 2.0),
        horizontal_flip: bool = True,
        image_column: str = "image",
        mask_column: str = "annotation",
        index_column: str | None = "example_index",
        skip_bad: bool = False,
        seed: int | None = None,
    ):
        if num_labels is not None and (
            isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
        ):
            raise ValueError(f"num_labels must be a positive integer or None, got {num_labels!r}.")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
            raise ValueError(f"ignore_index must be a non-negative integer, got {ignore_index!r}.")
        if num_labels is not None and ignore_index < num_labels:
            raise ValueError(f"ignore_index {ignore_index} collides with class ids 0..{num_labels - 1}.")
        self.settings = settings
        self.train = bool(train)
        self.num_labels = num_labels
        self.do_reduce_labels = bool(do_reduce_labels)
        self.ignore_index = ignore_index
        self.scale_range = _check_range("scale_range", scale_range, 0.0)
        self.horizontal_flip = bool(horizontal_flip)
        self.image_column = image_column
        self.mask_column = mask_column
        self.index_column = index_column
        self.skip_bad = bool(skip_bad)
        self.num_skipped = 0
        self._rng = _WorkerAwareRng(seed)

    def _augment(self, image: PIL.Image.Image, mask: np.ndarray) -> tuple[PIL.Image.Image, np.ndarray]:
        settings = self.settings
        crop_height, crop_width = settings.height, settings.width
        if not self.train:
            return image.resize((crop_width, crop_height), settings.resample), _resize_mask_nearest(
                mask, crop_height, crop_width
            )
        rng = self._rng.get()
        # Random scale relative to the crop, not to the source image, so that datasets with very large photos get
        # the same range of object sizes as ADE20K's ~512-pixel images.
        width, height = image.size
        factor = rng.uniform(*self.scale_range) * max(crop_height, crop_width) / min(width, height)
        new_width, new_height = max(1, round(width * factor)), max(1, round(height * factor))
        pixels = np.asarray(image.resize((new_width, new_height), settings.resample))
        mask = _resize_mask_nearest(mask, new_height, new_width)
        # Pad to at least the crop size: image with 0, mask with the ignore index so padding is never trained on.
        pad_height, pad_width = max(0, crop_height - new_height), max(0, crop_width - new_width)
        if pad_height or pad_width:
            pixel_padding = ((0, pad_height), (0, pad_width)) + ((0, 0),) * (pixels.ndim - 2)
            pixels = np.pad(pixels, pixel_padding, constant_values=0)
            mask = np.pad(mask, ((0, pad_height), (0, pad_width)), constant_values=self.ignore_index)
        top = int(rng.integers(0, mask.shape[0] - crop_height + 1))
        left = int(rng.integers(0, mask.shape[1] - crop_width + 1))
        pixels = pixels[top : top + crop_height, left : left + crop_width]
        mask = mask[top : top + crop_height, left : left + crop_width]
        if self.horizontal_flip and rng.random() < 0.5:
            pixels, mask = pixels[:, ::-1], mask[:, ::-1]
        return PIL.Image.fromarray(np.ascontiguousarray(pixels)), mask

    def _example_name(self, batch: Mapping, position: int, image_value) -> str:
        if self.index_column is not None and self.index_column in batch:
            name = f"example {batch[self.index_column][position]}"
        else:
            name = f"example {position} of the batch"
        path = _source(image_value)[1] if not isinstance(image_value, (PIL.Image.Image, np.ndarray)) else None
        path = path or getattr(image_value, "filename", None)
        return f"{name} ({os.path.basename(path)})" if path else name

    def __call__(self, batch: Mapping) -> dict:
        images = _column(batch, self.image_column, "image")
        masks = _column(batch, self.mask_column, "mask")
        pixel_values, labels = [], []
        for position, (image_value, mask_value) in enumerate(zip(images, masks)):
            name = self._example_name(batch, position, image_value)
            try:
                image = decode_image(image_value, name)
                mask = decode_mask(mask_value, name)
            except UndecodableImageError:
                if not self.skip_bad:
                    raise
                self.num_skipped += 1
                continue
            if mask.shape != (image.height, image.width):
                raise ValueError(
                    f"{name}: mask size {mask.shape[1]}x{mask.shape[0]} (width x height) differs from image size "
                    f"{image.width}x{image.height}; every mask must match its image pixel for pixel."
                )
            if image.mode != self.settings.mode:
                image = image.convert(self.settings.mode)
            if self.do_reduce_labels:
                mask = reduce_labels(mask, self.ignore_index)
            if self.num_labels is not None:
                check_label_values(mask, self.num_labels, self.ignore_index, name)
            image, mask = self._augment(image, mask)
            pixel_values.append(self.settings.to_pixel_values(image))
            labels.append(mask.astype(np.int64))
        return {"pixel_values": pixel_values, "labels": labels}


def build_segmentation_transforms(
    image_processor=None,
    *,
    train: bool,
    do_reduce_labels: bool | None = None,
    size=None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    **transform_kwargs,
) -> SegmentationTransform:
    """A paired image/mask batch transform for `dataset.set_transform` in semantic segmentation.

    Training: the pair is rescaled so that the image's shorter side is `s × max(crop height, crop width)` with `s`
    drawn from `scale_range`, padded up to the crop size where needed (image with 0, mask with `ignore_index`),
    cropped at a random position and flipped horizontally half of the time. Evaluation: both are resized to the
    output size. Images are resized with the processor's filter (bilinear by default), masks with nearest
    neighbour, so no new class ids appear.

    Bad input is reported per example: a mask whose size differs from its image and label values
    `>= num_labels` that are not `ignore_index` raise `ValueError` naming the example (the `index_column` value when
    the dataset has one, as [`~hf_hem.data.load_segmentation_dataset`] adds, else the position in the batch, plus
    the file name when known). An undecodable image or mask raises [`UndecodableImageError`] naming the file, or,
    with `skip_bad=True`, is left out of the batch and counted in `num_skipped`. To catch undecodable files here
    rather than inside `datasets`, load the columns with `datasets.Image(decode=False)`
    (`load_segmentation_dataset(..., decode=False)`): this transform decodes them itself.

    The arguments other than `image_processor`, `do_reduce_labels`, `size`, `image_mean` and `image_std` are the
    keyword arguments of [`SegmentationTransform`], with its defaults.

    Args:
        image_processor (`transformers.BaseImageProcessor`, *optional*): Gives the size, statistics and the default
            of `do_reduce_labels`.
        train (`bool`): Random augmentation or the deterministic evaluation path.
        num_labels (`int`, *optional*): Enables the label-value check.
        do_reduce_labels (`bool`, *optional*): Apply [`reduce_labels`] first (ADE20K). Defaults to the processor's
            `do_reduce_labels`, else `False`.
        ignore_index (`int`, *optional*, defaults to 255): Value of ignored pixels (SegFormer's
            `semantic_loss_ignore_index`).
        size, image_mean, image_std: As in [`build_classification_transforms`]; `shortest_edge` sizes give a square.
        scale_range (`tuple[float, float]`, *optional*, defaults to `(0.5, 2.0)`): Range of the random scale.
        horizontal_flip (`bool`, *optional*, defaults to `True`): Flip half of the training pairs.
        image_column (`str`, *optional*, defaults to `"image"`), mask_column (`str`, *optional*, defaults to
            `"annotation"`): Input columns.
        index_column (`str`, *optional*, defaults to `"example_index"`): Column naming examples in errors, if present.
        skip_bad (`bool`, *optional*, defaults to `False`): Skip undecodable examples instead of raising. The batch
            then has fewer examples; single-item access (`dataset[i]`) of a skipped example raises `IndexError`,
            while `DataLoader` batches (which `datasets` fetches with `__getitems__`) just come out smaller.
        seed (`int`, *optional*): Makes the augmentation reproducible.

    Returns:
        [`SegmentationTransform`]: maps a batch to `{"pixel_values": [np.ndarray (C, H, W) float32],
        "labels": [np.ndarray (H, W) int64]}`.
    """
    settings = resolve_image_settings(image_processor, size=size, image_mean=image_mean, image_std=image_std)
    if do_reduce_labels is None:
        do_reduce_labels = bool(getattr(image_processor, "do_reduce_labels", False))
    return SegmentationTransform(settings, train=train, do_reduce_labels=do_reduce_labels, **transform_kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Collation


def collate_fn(examples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """Stack transformed examples into a batch of tensors.

    Args:
        examples (`Sequence[dict]`): Items with `pixel_values` (`(C, H, W)` arrays or tensors) and optionally
            `labels` (class ids, or `(H, W)` masks).

    Returns:
        `dict` with `pixel_values` (`torch.float32`) and, if present, `labels` (`torch.int64`).

    Shape:
        - pixel_values: `(batch_size, C, H, W)`
        - labels: `(batch_size,)` for classification, `(batch_size, H, W)` for segmentation
    """
    if len(examples) == 0:
        raise ValueError(
            "collate_fn got an empty batch (were all its examples skipped as undecodable?). Use a larger batch or fix "
            "the files."
        )
    batch = {
        "pixel_values": torch.stack(
            [torch.as_tensor(example["pixel_values"], dtype=torch.float32) for example in examples]
        )
    }
    if "labels" in examples[0]:
        batch["labels"] = torch.as_tensor(np.stack([np.asarray(example["labels"]) for example in examples])).long()
    return batch
