#!/usr/bin/env python
"""Fine-tune a text classifier (GLUE-style: single sentences or sentence pairs) with HEM instead of cross-entropy.

Runs as is under plain python and under `accelerate launch` (single GPU, several GPUs, or 2 CPU processes; configs in
`configs/accelerate/`). Without a dataset it trains a small BERT, with a tokenizer built from the data, on an embedded
synthetic sentiment dataset in the schema of glue/sst2, offline:

    python scripts/run_text_classification.py --output_dir sentiment-hem
    python scripts/run_text_classification.py --dataset_name glue --dataset_config_name mrpc \\
        --text_column_names sentence1,sentence2 --model_name_or_path bert-base-cased --loss_name hem \\
        --max_seq_length 128 --learning_rate 2e-5 --num_train_epochs 3 --output_dir bert-hem-mrpc
    python scripts/run_text_classification.py --train_file train.csv --validation_file dev.csv \\
        --text_column_names text --label_column_name label --model_type bert --output_dir csv-hem
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/run_text_classification.py config.yaml

Every argument of `TextClassificationModelArguments`, `TextClassificationDataArguments`
(hf_hem.pipelines.text_classification) and `HEMConfig` is a flag; a single `.yaml`/`.json` file may come first,
followed by flags that override it. All the logic lives in `hf_hem.pipelines.text_classification`.
"""

import sys

from hf_hem.pipelines import run_script
from hf_hem.pipelines.text_classification import parse_text_classification_args, run_text_classification


def main(argv=None) -> int:
    """Parse the arguments (flags, or a config file then flags), train, evaluate, save and push; 1 if the push failed."""
    return run_script(parse_text_classification_args, run_text_classification, argv)


if __name__ == "__main__":
    sys.exit(main())
