#!/usr/bin/env python
"""Fine-tune a token classifier (NER, POS tagging, CoNLL-style data) with HEM instead of cross-entropy.

Runs as is under plain python and under `accelerate launch` (single GPU, several GPUs, or 2 CPU processes; configs in
`configs/accelerate/`). Without a dataset it trains a small BERT, with a tokenizer built from the data, on an embedded
synthetic NER dataset in the schema of conll2003, offline:

    python scripts/run_token_classification.py --output_dir ner-hem
    python scripts/run_token_classification.py --dataset_name conll2003 --model_name_or_path bert-base-cased \\
        --loss_name hem --learning_rate 5e-5 --num_train_epochs 3 --output_dir bert-hem-conll2003
    python scripts/run_token_classification.py --train_file train.json --validation_file dev.json \\
        --text_column_name tokens --label_column_name ner_tags --label_all_tokens true --output_dir json-hem
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/run_token_classification.py config.yaml

Every argument of `TokenClassificationModelArguments`, `TokenClassificationDataArguments`
(hf_hem.pipelines.token_classification) and `HEMConfig` is a flag; a single `.yaml`/`.json` file may come first,
followed by flags that override it. All the logic lives in `hf_hem.pipelines.token_classification`.
"""

import sys

from hf_hem.pipelines import run_script
from hf_hem.pipelines.token_classification import parse_token_classification_args, run_token_classification


def main(argv=None) -> int:
    """Parse the arguments (flags, or a config file then flags), train, evaluate, save and push; 1 if the push failed."""
    return run_script(parse_token_classification_args, run_token_classification, argv)


if __name__ == "__main__":
    sys.exit(main())
