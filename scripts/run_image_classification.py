#!/usr/bin/env python
"""Train an image classifier with HEM (or any hf_hem loss) instead of cross-entropy.

Runs as is under plain python and under `accelerate launch` (single GPU, several GPUs, or 2 CPU processes; configs in
`configs/accelerate/`). Without a dataset it trains a small ResNet on the embedded scikit-learn digits, offline:

    python scripts/run_image_classification.py --output_dir digits-hem --unknown_classes 8 9
    python scripts/run_image_classification.py --dataset_name AI-Lab-Makerere/beans --label_column_name labels \\
        --model_name_or_path google/vit-base-patch16-224-in21k --loss_name hem --output_dir vit-hem-beans
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/run_image_classification.py config.yaml

Every argument of `ModelArguments`, `DataTrainingArguments` (hf_hem.pipelines) and `HEMConfig` is a flag; a single
`.yaml`/`.json` file may come first, followed by flags that override it. All the logic lives in
`hf_hem.pipelines.image_classification`.
"""

import sys

from hf_hem.pipelines import parse_image_classification_args, run_image_classification, run_script


def main(argv=None) -> int:
    """Parse the arguments (flags, or a config file then flags), train, evaluate, save and push; 1 if the push failed."""
    return run_script(parse_image_classification_args, run_image_classification, argv)


if __name__ == "__main__":
    sys.exit(main())
