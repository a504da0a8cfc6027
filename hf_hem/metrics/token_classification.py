"""Entity-level precision, recall and F1 of tagged sequences (BIO / IOB2, IOB1, IOBES), in plain Python.

The conventions are those of the CoNLL evaluation script (and of `seqeval`'s default mode), so the numbers can be
compared with published ones:

* a tag is `O` (outside) or `<prefix>-<type>` with prefix `B` (begin), `I` (inside), `E` (end) or `S` (single);
  a tag without a known prefix, such as `PER`, is read as `I-PER`;
* an entity starts at `B-X` or `S-X`, at `I-X`/`E-X` right after `O` or after a tag of another type (so IOB1 and
  badly formed IOB2 sequences still give entities), and ends before the next tag that does not continue it;
* an entity is correct when type, start and end all match; precision, recall and F1 are micro-averaged over the
  entities of all sequences (0 when there is nothing to divide by).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


__all__ = ["entity_spans", "token_classification_metrics"]

_PREFIXES = ("B", "I", "E", "S")


def _split_tag(tag: str) -> tuple[str, str]:
    """`(prefix, type)`: `("O", "")` for outside, `("I", tag)` for a tag without a known prefix."""
    tag = str(tag)
    if tag == "O" or tag == "":
        return "O", ""
    for separator in ("-", "_"):
        prefix, found, kind = tag.partition(separator)
        if found and prefix in _PREFIXES:
            return prefix, kind
    return "I", tag


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one tagged sequence as `(type, start, end)` with `end` exclusive.

    Example:

    ```python
    >>> entity_spans(["B-PER", "I-PER", "O", "B-LOC", "I-ORG"])
    [('PER', 0, 2), ('LOC', 3, 4), ('ORG', 4, 5)]
    ```
    """
    spans: list[tuple[str, int, int]] = []
    start, current = None, ""
    previous_prefix = "O"
    for position, tag in enumerate(tags):
        prefix, kind = _split_tag(tag)
        continues = start is not None and prefix in ("I", "E") and kind == current and previous_prefix in ("B", "I")
        if start is not None and not continues:
            spans.append((current, start, position))
            start = None
        if start is None and prefix != "O":
            start, current = position, kind
        if start is not None and prefix in ("E", "S"):
            spans.append((current, start, position + 1))
            start = None
        previous_prefix = prefix
    if start is not None:
        spans.append((current, start, len(tags)))
    return spans


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def token_classification_metrics(
    references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]
) -> dict[str, float | dict[str, dict[str, float]]]:
    """Entity-level precision, recall and F1 and token accuracy of predicted tag sequences.

    Args:
        references (`Sequence[Sequence[str]]`): The true tags of each sequence, e.g. `[["B-PER", "I-PER", "O"]]`.
        predictions (`Sequence[Sequence[str]]`): The predicted tags, one per reference tag.

    Returns:
        `dict`: `precision`, `recall`, `f1` (micro-averaged over entities), `accuracy` (share of tokens whose tag is
        right, `O` included), and `per_type`: for each entity type of the references or predictions, its
        `precision`, `recall`, `f1` and `number` (entities in the references).

    Raises:
        `ValueError`: the numbers of sequences, or the lengths of a sequence pair, differ.

    Example:

    ```python
    >>> scores = token_classification_metrics([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]])
    >>> scores["precision"], scores["recall"], scores["accuracy"]
    (1.0, 0.5, 0.75)
    ```
    """
    if len(references) != len(predictions):
        raise ValueError(
            f"got {len(references)} reference and {len(predictions)} predicted sequences; expected as many."
        )
    true_counts, predicted_counts, correct_counts = Counter(), Counter(), Counter()
    right_tokens = total_tokens = 0
    for index, (reference, prediction) in enumerate(zip(references, predictions)):
        if len(reference) != len(prediction):
            raise ValueError(
                f"sequence {index} has {len(reference)} reference and {len(prediction)} predicted tags; expected one "
                "predicted tag per reference tag."
            )
        right_tokens += sum(str(a) == str(b) for a, b in zip(reference, prediction))
        total_tokens += len(reference)
        true_spans, predicted_spans = set(entity_spans(reference)), set(entity_spans(prediction))
        true_counts.update(kind for kind, _, _ in true_spans)
        predicted_counts.update(kind for kind, _, _ in predicted_spans)
        correct_counts.update(kind for kind, _, _ in true_spans & predicted_spans)
    per_type = {}
    for kind in sorted(set(true_counts) | set(predicted_counts)):
        precision = _ratio(correct_counts[kind], predicted_counts[kind])
        recall = _ratio(correct_counts[kind], true_counts[kind])
        per_type[kind] = {
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "number": true_counts[kind],
        }
    precision = _ratio(sum(correct_counts.values()), sum(predicted_counts.values()))
    recall = _ratio(sum(correct_counts.values()), sum(true_counts.values()))
    return {
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "accuracy": _ratio(right_tokens, total_tokens),
        "per_type": per_type,
    }
