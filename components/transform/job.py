"""The transform step as one plain function over file paths: what its KFP component calls.

Kept free of KFP types so the step is unit-testable and runnable on its own (component.py beside
this module is its KFP wrapper).
"""

from __future__ import annotations

import pandas as pd


def transform_step(
    train_path: str, eval_path: str, output_dir: str, beam_args: list[str]
) -> dict[str, int]:
    from components.transform.transform import run_transform

    return run_transform(
        pd.read_parquet(train_path), pd.read_parquet(eval_path), output_dir, beam_args
    )
