"""`evaluate` module: an offline drop-in for the Hub's `seqeval` metric, computed by `hf_hem.metrics.seqeval_scores`
(the `seqeval` package is not needed)."""

import evaluate

from hf_hem.metrics.evaluate_support import metric_info
from hf_hem.metrics.sequence_labeling import seqeval_scores


_DESCRIPTION = """
Entity-level precision, recall and F1 of tagged sequences (named entities, chunks), per entity type and
micro-averaged over all entities, plus token accuracy, with the arguments and results of the Hub's `seqeval` metric
(`evaluate.load("seqeval")`), so that scripts written for it, such as transformers' `run_ner.py`, run offline with
`evaluate.load(hf_hem.metrics.evaluate_module_path("seqeval"))`. Entities are found with `seqeval`'s default
(`conlleval`) rules, which read IOB1, IOB2, IOE and IOBES tags, or, with `mode="strict"`, as well-formed chunks of
`scheme` (IOB2, IOE2, IOBES or BILOU).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[str]]`): Predicted tags, one list per sequence.
    references (`list[list[str]]`): True tags, the same lengths.
    suffix (`bool`, *optional*, defaults to `False`): Tags end with their prefix (`PER-B`).
    scheme (`str`, *optional*): `"IOB1"`, `"IOE1"`, `"IOB2"`, `"IOE2"`, `"IOBES"` or `"BILOU"`, for `mode="strict"`.
    mode (`str`, *optional*): `"strict"` to count only well-formed chunks.
    sample_weight (`list[float]`, *optional*): Accepted; as in `seqeval`, it does not change these scores.
    zero_division (`"warn"`, `0` or `1`, *optional*, defaults to `"warn"`): Value of a score that divides by zero.

Returns:
    `dict`: for every entity type a dict of `precision`, `recall`, `f1` and `number` (true entities), then
    `overall_precision`, `overall_recall`, `overall_f1` and `overall_accuracy`.

Example:
    >>> metric = evaluate.load(hf_hem.metrics.evaluate_module_path("seqeval"))
    >>> metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])["overall_f1"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Seqeval(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, predictions=["string"], references=["string"])

    def _compute(
        self,
        predictions,
        references,
        suffix: bool = False,
        scheme=None,
        mode=None,
        sample_weight=None,
        zero_division="warn",
    ):
        return seqeval_scores(
            predictions,
            references,
            suffix=suffix,
            scheme=scheme,
            mode=mode,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
