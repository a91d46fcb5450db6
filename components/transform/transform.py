"""Transform: TFT analyses the training split and transforms both splits with the same graph.

The ``preprocessing_fn`` is generated from the feature contract: the contract's stateless derived
features, then z-scoring (a TFT full-pass analyzer) of everything that is not already bounded.
The resulting transform graph is what the exported serving model embeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c
from core.dataio import format_timestamps

TRANSFORM_FN_DIR = "transform_fn"
SPLITS = ("train", "valid", "eval")
DEFAULT_VALID_FRACTION = 0.15
_BATCH_ROWS = 50_000  # rows per Arrow record batch fed to Beam


def preprocessing_fn(inputs: dict) -> dict:
    import tensorflow_transform as tft

    derived = c.derived_features(inputs)
    out = {
        name: value if name in c.UNSCALED_FEATURES else tft.scale_to_z_score(value)
        for name, value in derived.items()
    }
    # Passed through so transformed rows keep their label; the serving layer, called without
    # the label, drops this output by itself.
    out[c.LABEL] = inputs[c.LABEL]
    return out


def _tensor_adapter_config(schema):
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio

    reps = {
        name: schema_pb2.TensorRepresentation(
            dense_tensor=schema_pb2.TensorRepresentation.DenseTensor(
                column_name=name, shape=schema_pb2.FixedShape()
            )
        )
        for name in (*c.MODEL_INPUTS, c.LABEL)
    }
    return tfxio.TensorAdapterConfig(schema, reps)


def to_record_batches(df: pd.DataFrame) -> list:
    """One-value-per-row list columns, the Arrow form TFT's TFXIO path expects for dense tensors."""
    import pyarrow as pa

    batches = []
    for lo in range(0, len(df), _BATCH_ROWS):
        part = df.iloc[lo : lo + _BATCH_ROWS]
        offsets = pa.array(np.arange(len(part) + 1, dtype=np.int32))
        arrays = []
        for name in (*c.MODEL_INPUTS, c.LABEL):
            col = part[name]
            if name == c.TIMESTAMP:
                strings = format_timestamps(col) if hasattr(col, "dt") else col.astype(str)
                values = pa.array(strings.to_numpy(dtype=object), pa.binary())
            elif name == c.LABEL:
                values = pa.array(col.to_numpy(dtype=np.int64))
            else:
                values = pa.array(col.to_numpy(dtype=np.float32))
            arrays.append(pa.ListArray.from_arrays(offsets, values))
        batches.append(pa.RecordBatch.from_arrays(arrays, [*c.MODEL_INPUTS, c.LABEL]))
    return batches


def _batch_frame(rb) -> pd.DataFrame:
    return pd.DataFrame(
        {
            name: rb.column(i).flatten().to_numpy(zero_copy_only=False)
            for i, name in enumerate(rb.schema.names)
        }
    )[[*c.transformed_feature_names(), c.LABEL]]


class _WriteParquet:
    """Writes each transformed batch as its own Parquet shard (works on any Beam runner)."""

    def __init__(self, directory: str, split: str):
        self.directory, self.split = directory, split

    def __call__(self, item) -> str:
        import uuid

        path = os.path.join(self.directory, f"{self.split}-{uuid.uuid4().hex}.parquet")
        _batch_frame(item[0]).to_parquet(path, index=False)
        return path


def split_validation(
    train: pd.DataFrame, valid_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest part of the training window validates (early stopping): time never leaks back."""
    order = train.sort_values(c.TIMESTAMP, kind="mergesort")
    cut = int(round(len(order) * (1 - valid_fraction)))
    fit, valid = order.iloc[:cut], order.iloc[cut:]
    if valid.empty or valid[c.LABEL].sum() == 0 or fit[c.LABEL].sum() == 0:
        raise ValueError(
            f"training window too small to hold out {valid_fraction:.0%} for validation with "
            "frauds on both sides; widen the window"
        )
    return fit.reset_index(drop=True), valid.reset_index(drop=True)


def _default_runner(beam_args: list[str]):
    """The in-process FnApiRunner unless the caller names a runner.

    Beam 2.72's DirectRunner first tries Prism, which downloads a binary at run time: a network
    call (and a wait) that an offline pipeline step must never make.
    """
    if any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        return None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def run_transform(
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    output_dir: str | Path,
    beam_args: list[str],
    valid_fraction: float = DEFAULT_VALID_FRACTION,
) -> dict[str, int]:
    """Analyse on the training window, transform train/valid/eval with that one graph.

    ``beam_args`` pass straight to Beam's PipelineOptions (e.g. --runner=DataflowRunner ...);
    the default is the DirectRunner on this machine.
    """
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fit, valid = split_validation(train, valid_fraction)
    batches = {"train": to_record_batches(fit), "valid": to_record_batches(valid)}
    batches["eval"] = to_record_batches(evaluation)
    config = _tensor_adapter_config(batches["train"][0].schema)
    for split in SPLITS:
        (output_dir / split).mkdir(exist_ok=True)

    with (
        beam.Pipeline(runner=_default_runner(beam_args), options=PipelineOptions(beam_args)) as p,
        tft_beam.Context(temp_dir=os.fspath(output_dir / "tmp"), force_tf_compat_v1=False),
    ):
        raw = {
            split: p | f"Read{split}" >> beam.Create(batches[split], reshuffle=False)
            for split in SPLITS
        }
        # Statistics come from the whole training window (fit + valid), like the served model.
        analyze_input = (raw["train"], raw["valid"]) | "TrainWindow" >> beam.Flatten()
        transform_fn = (analyze_input, config) | "Analyze" >> tft_beam.AnalyzeDataset(
            preprocessing_fn
        )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(
            os.fspath(output_dir / TRANSFORM_FN_DIR)
        )
        for split in SPLITS:
            transformed, _ = ((raw[split], config), transform_fn) | f"Transform{split}" >> (
                tft_beam.TransformDataset(output_record_batches=True)
            )
            _ = transformed | f"Write{split}" >> beam.Map(
                _WriteParquet(os.fspath(output_dir / split), split)
            )

    return {
        f"transformed_{split}_rows": len(load_transformed(output_dir, split)) for split in SPLITS
    }


def load_transformed(output_dir: str | Path, split: str) -> pd.DataFrame:
    shards = sorted((Path(output_dir) / split).glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{output_dir}/{split}: no transformed shards")
    return pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
