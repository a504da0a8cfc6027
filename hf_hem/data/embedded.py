"""Embedded default datasets built from scikit-learn's handwritten digits, so examples and tests run offline.

scikit-learn ships the 1,797 8×8 digit images of the UCI "Optical Recognition of Handwritten Digits" set inside its
wheel, so nothing is downloaded. Both builders return `datasets.DatasetDict` objects with `train` and `validation`
splits in the schema the Hub datasets use, so the same scripts and transforms handle them and real data alike.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature


DIGIT_NAMES = tuple(str(digit) for digit in range(10))

# sklearn's digit images hold counts 0..16 (pixels on in a 4×4 block); this maps them onto 0..255.
_DIGITS_MAX_VALUE = 16.0


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}.")
    return float(value)


def _split_digits(seed: int, validation_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits as uint8 (N, 8, 8) images and labels, with a stratified, seeded train/validation split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / _DIGITS_MAX_VALUE)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_indices, validation_indices = train_test_split(
        np.arange(len(labels)), test_size=validation_fraction, stratify=labels, random_state=seed
    )
    return images, labels, train_indices, validation_indices


def load_digits_dataset(
    image_size: int = 32, num_channels: int = 3, seed: int = 0, test_fraction: float = 0.2
) -> DatasetDict:
    """scikit-learn's 8×8 handwritten digits, upscaled, as an image-classification `DatasetDict`.

    The split is stratified (every digit keeps its share in both splits) and fully determined by `seed`.
    RGB is the default because the transformers vision models and image processors expect three channels; the
    grey value is copied into each channel.

    Args:
        image_size (`int`, *optional*, defaults to 32): Side of the square output images (bilinear upscaling).
        num_channels (`int`, *optional*, defaults to 3): 3 for mode `"RGB"` images, 1 for mode `"L"`.
        seed (`int`, *optional*, defaults to 0): Seed of the stratified split.
        test_fraction (`float`, *optional*, defaults to 0.2): Share of the 1,797 images put in `validation`.

    Returns:
        `datasets.DatasetDict` with splits `train` and `validation`, each with columns `image` (`datasets.Image`,
        decoded as `PIL.Image.Image`) and `label` (`datasets.ClassLabel` with names `"0"` … `"9"`).

    Example:

    ```python
    >>> from hf_hem.data import load_digits_dataset
    >>> digits = load_digits_dataset()
    >>> digits["train"].num_rows, digits["validation"].num_rows
    (1437, 360)
    >>> digits["train"][0]["image"].size
    (32, 32)
    ```
    """
    image_size = _check_int("image_size", image_size, minimum=8)
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 (mode 'L') or 3 (mode 'RGB'), got {num_channels!r}.")
    test_fraction = _check_fraction("test_fraction", test_fraction)
    images, labels, train_indices, validation_indices = _split_digits(seed, test_fraction)
    mode = "RGB" if num_channels == 3 else "L"
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(DIGIT_NAMES))})

    def build(indices: np.ndarray) -> Dataset:
        pil_images = [
            PIL.Image.fromarray(images[index]).resize((image_size, image_size), PIL.Image.BILINEAR).convert(mode)
            for index in indices
        ]
        return Dataset.from_dict({"image": pil_images, "label": labels[indices].tolist()}, features=features)

    return DatasetDict({"train": build(train_indices), "validation": build(validation_indices)})


def digits_segmentation_id2label(reduce_labels: bool = True) -> dict[int, str]:
    """Class names of [`load_digits_segmentation_dataset`].

    Args:
        reduce_labels (`bool`, *optional*, defaults to `True`): Whether the masks go through
            [`~hf_hem.data.reduce_labels`] (background ignored, digits become classes 0..9). Without it, class 0 is
            the background and digit `d` is class `d + 1`.

    Returns:
        `dict[int, str]`: 10 entries with reduced labels, 11 without.
    """
    digit_classes = dict(enumerate(DIGIT_NAMES))
    if reduce_labels:
        return digit_classes
    return {0: "background", **{class_id + 1: name for class_id, name in digit_classes.items()}}


def _render_scene(
    rng: np.random.Generator,
    glyphs: np.ndarray,
    glyph_labels: np.ndarray,
    image_size: int,
    max_digits: int,
    digit_size_range: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, int]:
    """One noisy background with 1..max_digits digits alpha-blended on top; returns (RGB uint8, mask uint8, count)."""
    background = rng.uniform(0.0, 90.0) + rng.uniform(-20.0, 20.0, size=3)
    canvas = background + rng.normal(0.0, 12.0, size=(image_size, image_size, 3))
    mask = np.zeros((image_size, image_size), dtype=np.uint8)
    num_digits = int(rng.integers(1, max_digits + 1))
    for _ in range(num_digits):
        glyph_index = int(rng.integers(len(glyphs)))
        side = int(rng.integers(digit_size_range[0], digit_size_range[1] + 1))
        alpha = np.asarray(PIL.Image.fromarray(glyphs[glyph_index]).resize((side, side), PIL.Image.BILINEAR))
        alpha = alpha.astype(np.float64) / 255.0
        top, left = (int(offset) for offset in rng.integers(0, image_size - side + 1, size=2))
        color = rng.uniform(150.0, 255.0, size=3)
        window = canvas[top : top + side, left : left + side]
        window *= 1.0 - alpha[..., None]
        window += alpha[..., None] * color
        # A pixel belongs to the digit when the stroke dominates the blend; later digits occlude earlier ones,
        # in the picture and in the mask alike.
        mask[top : top + side, left : left + side][alpha >= 0.5] = 1 + glyph_labels[glyph_index]
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, mask, num_digits


def load_digits_segmentation_dataset(
    num_images: int = 1000,
    image_size: int = 64,
    seed: int = 0,
    validation_fraction: float = 0.2,
    max_digits: int = 3,
) -> DatasetDict:
    """A synthetic semantic-segmentation dataset in the ADE20K (`scene_parse_150`) schema, built from sklearn digits.

    Each image is a noisy, tinted background with 1 to `max_digits` digits pasted at random positions and sizes
    (between a quarter and half of the image side). The mask follows ADE20K's convention: 0 is background and
    `1 + d` marks the pixels of digit `d`. With `do_reduce_labels` (see [`~hf_hem.data.reduce_labels`]) the
    background becomes the ignore index 255 and the digits classes 0..9, exactly as ADE20K's 150 classes become
    0..149. Train and validation images draw their digits from disjoint halves of a stratified split of the sklearn
    digits, so validation shows handwriting the model has not seen. Thousands of images take a few seconds.

    Args:
        num_images (`int`, *optional*, defaults to 1000): Total number of images over both splits.
        image_size (`int`, *optional*, defaults to 64): Side of the square images and masks.
        seed (`int`, *optional*, defaults to 0): Seeds the digit split and the scene generator; same seed, same data.
        validation_fraction (`float`, *optional*, defaults to 0.2): Share of the images (and of the source digits)
            put in `validation`.
        max_digits (`int`, *optional*, defaults to 3): Most digits pasted into one image (at least one always is).

    Returns:
        `datasets.DatasetDict` with splits `train` and `validation` and columns `image` (`datasets.Image`, RGB),
        `annotation` (`datasets.Image`, mode `"L"`, values 0..10) and `scene_category` (`int64`: the number of digits
        pasted, kept only so the schema matches ADE20K's).
    """
    num_images = _check_int("num_images", num_images, minimum=2)
    image_size = _check_int("image_size", image_size, minimum=16)
    max_digits = _check_int("max_digits", max_digits, minimum=1)
    validation_fraction = _check_fraction("validation_fraction", validation_fraction)
    num_validation = min(max(1, round(num_images * validation_fraction)), num_images - 1)
    images, labels, train_indices, validation_indices = _split_digits(seed, validation_fraction)
    digit_size_range = (max(4, image_size // 4), max(4, image_size // 2))
    features = Features({"image": ImageFeature(), "annotation": ImageFeature(), "scene_category": Value("int64")})

    def build(split_id: int, count: int, pool: np.ndarray) -> Dataset:
        rng = np.random.default_rng([seed, split_id])
        glyphs, glyph_labels = images[pool], labels[pool]
        columns = {"image": [], "annotation": [], "scene_category": []}
        for _ in range(count):
            image, mask, num_digits = _render_scene(
                rng, glyphs, glyph_labels, image_size, max_digits, digit_size_range
            )
            columns["image"].append(PIL.Image.fromarray(image))
            columns["annotation"].append(PIL.Image.fromarray(mask))
            columns["scene_category"].append(num_digits)
        return Dataset.from_dict(columns, features=features)

    return DatasetDict(
        {
            "train": build(0, num_images - num_validation, train_indices),
            "validation": build(1, num_validation, validation_indices),
        }
    )
