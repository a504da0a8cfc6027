"""Finding a dataset's column by name: the one asked for, or the first of the usual names that is present."""

from __future__ import annotations

from collections.abc import Sequence


__all__ = ["pick_column"]


def pick_column(
    column_names: Sequence[str],
    requested: str | None,
    candidates: Sequence[str],
    what: str,
    hint: str = "Pass the column name explicitly.",
) -> str:
    """The column `requested`, or else the first of `candidates` among `column_names`.

    Both error messages list the columns present, so a wrong or missing name can be fixed without opening the data.

    Args:
        column_names (`Sequence[str]`): The columns of the dataset (or the keys of a batch).
        requested (`str`, *optional*): The column asked for; it must be present. `None` tries `candidates`.
        candidates (`Sequence[str]`): Usual names of the column, in order of preference.
        what (`str`): What the column holds, for the messages, e.g. `"label"` or `"mask"`.
        hint (`str`, *optional*, defaults to `"Pass the column name explicitly."`): Ends the message when no
            candidate is present: how to name the column.

    Returns:
        `str`: the name of the column.

    Raises:
        `ValueError`: `requested` is not a column, or `requested` is `None` and no candidate is.
    """
    columns = list(column_names)
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"{what} column {requested!r} not found; columns present: {columns}.")
        return requested
    found = next((name for name in candidates if name in columns), None)
    if found is None:
        raise ValueError(f"no {what} column found (looked for {list(candidates)}); columns present: {columns}. {hint}")
    return found
