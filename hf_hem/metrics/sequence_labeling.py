"""Entity-level scores of tagged sequences exactly as the Hub's `seqeval` metric returns them, without `seqeval`.

[`seqeval_scores`] takes the arguments of `evaluate.load("seqeval").compute` and returns the same dict: for every
entity type its `precision`, `recall`, `f1` and `number` (entities of that type in the references), then
`overall_precision`, `overall_recall`, `overall_f1` (micro-averaged over all entities) and `overall_accuracy` (share
of tokens whose tag is right). `hf_hem`'s offline `seqeval` evaluate module wraps it, so `run_ner.py` and other
scripts that load `seqeval` run without the Hub and without the package.

Chunking follows `seqeval`'s two modes:

* **default** (`mode=None`, the Hub module's default; the CoNLL-2000 `conlleval` rules): a tag's first character is
  its prefix and the rest after the first `-` its type (`B-PER` -> `B`, `PER`; `O` has no type). Whatever the
  scheme (IOB1, IOB2, IOE, IOBES), a chunk ends before a tag when the previous tag is `E` or `S`; when the previous
  tag is `B` or `I` and this one is `B`, `S` or `O`; or when the type changes after a non-`O` tag. A chunk starts at
  `B` and `S`; at `I` or `E` after `O`, `E` or `S`; and at any non-`O` tag whose type differs from the previous one.
  So `I-PER` after `O` starts an entity (IOB1), and `B-PER I-LOC` is two entities. Sequences are scored as if joined
  with an `O` between them.
* **strict** (`mode="strict"`): only well-formed chunks of the given `scheme` count, e.g. in IOB2 an entity is `B-X`
  followed by `I-X`s, and a stray `I-X` is no entity; in IOBES and BILOU an entity must be closed (`E-X`/`L-X`) or
  single (`S-X`/`U-X`); in IOE2 it is `I-X`s closed by `E-X`. Without `scheme` it is detected from the references'
  prefixes, as `seqeval` does. Strict IOB1 and IOE1 are not supported (they are rarely used; use the default mode).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence


__all__ = ["default_mode_entities", "seqeval_scores", "strict_mode_entities"]

SCHEMES = ("IOB1", "IOE1", "IOB2", "IOE2", "IOBES", "BILOU")
_STRICT_SCHEMES = {
    # scheme: (allowed prefixes, prefix of a one-token entity, prefix opening a longer one, prefix closing it)
    "IOB2": ("IOB", None, "B", None),
    "IOE2": ("IOE", None, None, "E"),
    "IOBES": ("IOBES", "S", "B", "E"),
    "BILOU": ("IOBLU", "U", "B", "L"),
}


def _split(tag: str, suffix: bool) -> tuple[str, str]:
    """`(prefix, type)` of a tag as `seqeval`'s default mode reads it; a tag without a type has type `"_"`."""
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tags must be non-empty strings such as 'B-PER' or 'O', got {tag!r}.")
    if suffix:
        return tag[-1], tag[:-1].rsplit("-", maxsplit=1)[0] or "_"
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _chunk_ends(previous: str, previous_type: str, prefix: str, kind: str) -> bool:
    if previous in ("E", "S"):
        return True
    if previous in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return previous not in ("O", ".") and previous_type != kind


def _chunk_starts(previous: str, previous_type: str, prefix: str, kind: str) -> bool:
    if prefix in ("B", "S"):
        return True
    if previous in ("E", "S", "O") and prefix in ("E", "I"):
        return True
    return prefix not in ("O", ".") and previous_type != kind


def default_mode_entities(sequences: Sequence[Sequence[str]], suffix: bool = False) -> list[tuple[str, int, int]]:
    """The entities of tagged sequences under `seqeval`'s default rules, as `(type, first, last)` token positions.

    Positions count through all sequences, with one `O` between consecutive sequences (as `seqeval` joins them).

    Args:
        sequences (`Sequence[Sequence[str]]`): Tag sequences, e.g. `[["B-PER", "I-PER", "O"]]`.
        suffix (`bool`, *optional*, defaults to `False`): Tags end with their prefix (`PER-B`) instead.

    Example:

    ```python
    >>> default_mode_entities([["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG"]])
    [('PER', 0, 1), ('LOC', 3, 3), ('ORG', 5, 5)]
    ```
    """
    tags = [tag for sequence in sequences for tag in (*sequence, "O")]
    entities = []
    previous, previous_type, begin = "O", "", 0
    for position, tag in enumerate([*tags, "O"]):
        prefix, kind = _split(tag, suffix)
        if _chunk_ends(previous, previous_type, prefix, kind):
            entities.append((previous_type, begin, position - 1))
        if _chunk_starts(previous, previous_type, prefix, kind):
            begin = position
        previous, previous_type = prefix, kind
    return entities


def _detect_scheme(sequences: Sequence[Sequence[str]], suffix: bool) -> str:
    """The strict scheme of tagged sequences from the set of prefixes they use (as `seqeval.scheme.auto_detect`)."""
    prefixes = {tag[-1] if suffix else tag[0] for sequence in sequences for tag in sequence if tag}
    if "B" in prefixes and prefixes <= set("IOB"):
        return "IOB2"
    if "E" in prefixes and prefixes <= set("IOE"):
        return "IOE2"
    if ({"B", "E"} <= prefixes and prefixes <= set("IOBES")) or prefixes == {"S"}:
        return "IOBES"
    if ({"B", "L"} <= prefixes and prefixes <= set("IOBLU")) or prefixes == {"U"}:
        return "BILOU"
    raise ValueError(
        f"cannot detect the tagging scheme from the prefixes {sorted(prefixes)} of the references; pass scheme= "
        f"(one of {sorted(_STRICT_SCHEMES)}) or use the default mode (mode=None)."
    )


def strict_mode_entities(
    sequences: Sequence[Sequence[str]], scheme: str, suffix: bool = False
) -> list[tuple[int, str, int, int]]:
    """The well-formed entities of a tagging scheme, as `(sequence index, type, first, last)`.

    Args:
        sequences (`Sequence[Sequence[str]]`): Tag sequences.
        scheme (`str`): `"IOB2"`, `"IOE2"`, `"IOBES"` or `"BILOU"`.
        suffix (`bool`, *optional*, defaults to `False`): Tags end with their prefix (`PER-B`) instead.

    Raises:
        `ValueError`: a tag's prefix is not one of the scheme's.

    Example:

    ```python
    >>> strict_mode_entities([["I-PER", "B-PER", "I-PER", "O", "B-LOC"]], "IOB2")
    [(0, 'PER', 1, 2), (0, 'LOC', 4, 4)]
    ```
    """
    allowed, single, opening, closing = _STRICT_SCHEMES[scheme]
    entities = []
    for index, sequence in enumerate(sequences):
        parsed = []
        for tag in sequence:
            if not isinstance(tag, str) or not tag:
                raise ValueError(f"tags must be non-empty strings such as 'B-PER' or 'O', got {tag!r}.")
            prefix, kind = (tag[-1], tag[:-1]) if suffix else (tag[0], tag[1:])
            if prefix not in allowed:
                raise ValueError(
                    f"tag {tag!r} (sequence {index}) has prefix {prefix!r}; the {scheme} scheme allows "
                    f"{', '.join(allowed)}."
                )
            parsed.append((prefix, kind.strip("-") or "_"))
        position = 0
        while position < len(parsed):
            prefix, kind = parsed[position]
            if prefix == single:
                entities.append((index, kind, position, position))
                position += 1
                continue
            if opening is not None:
                opens = prefix == opening
            else:  # IOE2 has no opening prefix: a run of I-X (or a lone E-X) opens where the previous tag is no I-X
                opens = prefix in ("I", closing) and (position == 0 or parsed[position - 1] != ("I", kind))
            if not opens:
                position += 1
                continue
            last = position
            if prefix != closing:  # extend through the inside tags of the same type
                while last + 1 < len(parsed) and parsed[last + 1] == ("I", kind):
                    last += 1
                if closing and last + 1 < len(parsed) and parsed[last + 1] == (closing, kind):
                    last += 1
            if closing is None or parsed[last][0] == closing:
                entities.append((index, kind, position, last))
            position = last + 1
    return entities


def _ratio(numerator: int, denominator: int, zero_division: float) -> float:
    return numerator / denominator if denominator else zero_division


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def seqeval_scores(
    predictions: Sequence[Sequence[str]],
    references: Sequence[Sequence[str]],
    suffix: bool = False,
    scheme: str | None = None,
    mode: str | None = None,
    sample_weight: Sequence[float] | None = None,
    zero_division: str | int = "warn",
) -> dict:
    """Entity-level precision, recall, F1 per type and overall, and token accuracy: the Hub `seqeval` metric's result.

    Args:
        predictions (`Sequence[Sequence[str]]`): Predicted tags, one sequence per example (e.g. `[["B-PER", "O"]]`).
        references (`Sequence[Sequence[str]]`): True tags, the same lengths.
        suffix (`bool`, *optional*, defaults to `False`): Tags end with their prefix (`PER-B`).
        scheme (`str`, *optional*): `"IOB1"`, `"IOE1"`, `"IOB2"`, `"IOE2"`, `"IOBES"` or `"BILOU"`; used by the strict
            mode only (as in `seqeval`).
        mode (`str`, *optional*): `None` for the default (`conlleval`) chunking, `"strict"` for well-formed chunks.
        sample_weight (`Sequence[float]`, *optional*): Accepted for compatibility; as in `seqeval`, it does not change
            these scores.
        zero_division (`"warn"`, `0` or `1`, *optional*, defaults to `"warn"`): The value of a precision (no predicted
            entities) or recall (no true entities) that divides by zero; `"warn"` gives 0 and a warning.

    Returns:
        `dict`: `{type: {"precision", "recall", "f1", "number"}}` for every entity type of the references or
        predictions (sorted), then `overall_precision`, `overall_recall`, `overall_f1`, `overall_accuracy`.

    Example:

    ```python
    >>> scores = seqeval_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]])
    >>> scores["PER"]["f1"], scores["overall_precision"], scores["overall_accuracy"]
    (1.0, 0.5, 0.75)
    ```
    """
    if zero_division not in ("warn", 0, 1):
        raise ValueError(f"`zero_division` must be 'warn', 0 or 1, got {zero_division!r}.")
    if mode not in (None, "strict"):
        raise ValueError(f"`mode` must be None (default chunking) or 'strict', got {mode!r}.")
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(f"Scheme should be one of {list(SCHEMES)}, got {scheme!r}.")
    for name, sequences in (("predictions", predictions), ("references", references)):
        if isinstance(sequences, str) or any(isinstance(sequence, str) for sequence in sequences):
            raise ValueError(f"`{name}` must be a list of tag sequences (lists of strings), got {sequences!r:.80}.")
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predicted and {len(references)} reference sequences; expected as many."
        )
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        if len(prediction) != len(reference):
            raise ValueError(
                f"sequence {index} has {len(prediction)} predicted and {len(reference)} reference tags; expected one "
                "predicted tag per reference tag."
            )
    total_tokens = sum(len(reference) for reference in references)
    if total_tokens == 0:
        raise ValueError("`references` hold no tags; at least one token is needed.")

    if mode == "strict":
        strict_scheme = scheme or _detect_scheme(references, suffix)
        if strict_scheme not in _STRICT_SCHEMES:
            raise ValueError(
                f"the strict mode of the {strict_scheme} scheme is not supported here; use one of "
                f"{sorted(_STRICT_SCHEMES)} or the default mode (mode=None), which reads {strict_scheme} tags."
            )
        true_entities = set(strict_mode_entities(references, strict_scheme, suffix))
        predicted_entities = set(strict_mode_entities(predictions, strict_scheme, suffix))
        type_of = 1
    else:
        true_entities = set(default_mode_entities(references, suffix))
        predicted_entities = set(default_mode_entities(predictions, suffix))
        type_of = 0
    true_counts = Counter(entity[type_of] for entity in true_entities)
    predicted_counts = Counter(entity[type_of] for entity in predicted_entities)
    correct_counts = Counter(entity[type_of] for entity in true_entities & predicted_entities)

    fallback = 0.0 if zero_division in ("warn", 0) else 1.0
    undefined = []
    scores: dict = {}
    for kind in sorted(set(true_counts) | set(predicted_counts)):
        precision = _ratio(correct_counts[kind], predicted_counts[kind], fallback)
        recall = _ratio(correct_counts[kind], true_counts[kind], fallback)
        if not predicted_counts[kind] or not true_counts[kind]:
            undefined.append(kind)
        scores[kind] = {
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "number": true_counts[kind],
        }
    correct, predicted, true = (sum(counts.values()) for counts in (correct_counts, predicted_counts, true_counts))
    if not predicted or not true:
        undefined.append("overall")
    scores["overall_precision"] = _ratio(correct, predicted, fallback)
    scores["overall_recall"] = _ratio(correct, true, fallback)
    scores["overall_f1"] = _f1(scores["overall_precision"], scores["overall_recall"])
    right = sum(
        p == r for prediction, reference in zip(predictions, references) for p, r in zip(prediction, reference)
    )
    scores["overall_accuracy"] = right / total_tokens
    if undefined and zero_division == "warn":
        warnings.warn(
            f"precision or recall of {undefined} divides by zero (no predicted or no true entities) and is set to "
            "0.0; pass zero_division=0 or 1 to choose the value and silence this warning.",
            stacklevel=2,
        )
    return scores
