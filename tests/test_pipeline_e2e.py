"""The real training pipeline, end to end on small simulated data, through kfp.local.

One pipeline run, through ``fraud pipeline run`` with both model families, is shared by the tests
of this module (it takes a few minutes on 2 cores); a second, in process, trains the trees only,
with oblique splits.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stream_fixtures import MODEL_NAME, start_model_server

from components.train.gbt import SPARSE_OBLIQUE
from components.train.job import TRAIN_HISTORY_FILE
from core import contract as c
from core.dataio import read_transactions, write_transactions
from core.features.batch import build_feature_table
from core.metadata import GBT, METADATA_FILE, MLP, SCHEMA_VERSION, ModelMetadata
from core.model import (
    TFDF_OP_PREFIX,
    TRAIN_STATS_FILE,
    SavedModelScorer,
    input_arrays,
    model_versions,
    saved_model_ops,
)
from core.simulator import SimulationConfig, simulate

pytestmark = pytest.mark.slow

TRAIN_START, TRAIN_END = "2025-01-01", "2025-03-21"
GATE = {"min_auc": 0.75, "min_average_precision": 0.1}
# Few trees keep the trees' training to seconds on this data.
GBT_TREES = 60


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "transactions.parquet"
    write_transactions(
        simulate(SimulationConfig(n_customers=500, n_terminals=1000, n_days=80)), path
    )
    return path


@pytest.fixture(scope="module")
def pipeline_run(data_file, tmp_path_factory):
    """``fraud pipeline run`` training both families: (push result, parameters, root, stdout)."""
    from app.cli import main

    root = tmp_path_factory.mktemp("run")
    params = {"model_base_path": str(root / "models" / "fraud")}
    settings = {"epochs": 6, "model": f"{MLP},{GBT}", "gbt_num_trees": GBT_TREES, **GATE}
    args = ["pipeline", "run", "--data", str(data_file), "--pipeline-root", str(root / "kfp")]
    args += ["--train-start", TRAIN_START, "--train-end", TRAIN_END]
    args += ["--model-base-path", params["model_base_path"]]
    args += [f"--set={k}={v}" for k, v in settings.items()]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    result = json.loads(_artifact(root, "push", "pushed").read_text())
    return result, params, root, out.getvalue()


@pytest.fixture(scope="module")
def gbt_run(data_file, tmp_path_factory):
    """The pipeline, in process, with the trees alone: (push result, model base path)."""
    from pipelines.runners import run_steps

    root = tmp_path_factory.mktemp("gbt")
    base = root / "models" / "fraud"
    params = {
        "data_path": str(data_file),
        "train_start": TRAIN_START,
        "train_end": TRAIN_END,
        "model_base_path": str(base),
        "model": GBT,
        "gbt_num_trees": GBT_TREES,
        "gbt_split_axis": SPARSE_OBLIQUE,
        **GATE,
    }
    return run_steps(params, root / "steps"), base


def _artifact(root: Path, step: str, name: str) -> Path:
    (run_dir,) = [p for p in (root / "kfp").iterdir() if p.is_dir()]
    return run_dir / step / name


def test_pipeline_pushes_a_first_model(pipeline_run):
    result, params, root, _ = pipeline_run
    assert result["pushed"] is True and result["version"] == 1
    assert model_versions(params["model_base_path"]) == [1]
    version_dir = Path(params["model_base_path"]) / "1"
    meta = ModelMetadata.read(version_dir)
    assert meta.version == 1 and meta.model_name == "fraud"
    assert meta.label_delay_days == c.DEFAULT_LABEL_DELAY_DAYS
    assert meta.data_version.startswith(("md5:", "dvc:"))
    assert [f["name"] for f in meta.feature_inputs] == list(c.MODEL_INPUTS)
    assert 0 < meta.thresholds.review <= meta.thresholds.block <= 1
    assert meta.metrics["auc_roc"] >= 0.75
    assert set(meta.training_stats["features"]) == set(c.MODEL_INPUTS) - {c.TIMESTAMP}
    assert (version_dir / TRAIN_STATS_FILE).exists()
    assert meta.baseline["version"] is None  # the first model has no baseline
    raw = json.loads((version_dir / METADATA_FILE).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw == meta.to_dict()


def test_both_families_are_compared_and_the_best_is_pushed(pipeline_run):
    from components.evaluate.evaluator import choose_family, comparison_table

    result, params, root, printed = pipeline_run
    verdict = json.loads((_artifact(root, "evaluate", "blessing") / "verdict.json").read_text())
    families = verdict["families"]
    assert list(families) == [MLP, GBT]
    chosen = choose_family(families)
    assert verdict["model_family"] == result["model_family"] == chosen
    assert verdict["candidate"] == families[chosen]["candidate"]
    assert verdict["thresholds"] == families[chosen]["thresholds"]
    meta = ModelMetadata.read(Path(params["model_base_path"]) / "1")
    assert meta.model_family == chosen and meta.metrics == families[chosen]["candidate"]
    # What was pushed is the chosen family's SavedModel: it scores the window as evaluated.
    scores = np.load(_artifact(root, "evaluate", "blessing") / "eval_scores.npy")
    evaluation = pd.read_parquet(_artifact(root, "ingest", "eval_data"))
    pushed = SavedModelScorer(Path(params["model_base_path"]) / "1").score(evaluation)
    np.testing.assert_allclose(pushed, scores, rtol=1e-5, atol=1e-7)
    # `fraud pipeline run` prints the comparison, then what it pushed (after kfp.local's log).
    assert comparison_table(families, chosen) + "\nmodel pushed: version 1 at" in printed
    # Each family's figures are KFP metrics of the evaluate step.
    executor = json.loads(_artifact(root, "evaluate", "executor_output.json").read_text())
    logged = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    for family, figures in families.items():
        assert logged[f"{family}_average_precision"] == figures["candidate"]["average_precision"]


def test_a_trees_only_run_pushes_a_tf_df_model_the_server_answers(gbt_run, data_file, tmp_path):
    from serving.client import ModelClient
    from serving.grpc_client import GrpcModelClient

    result, base = gbt_run
    assert result["pushed"] and result["model_family"] == GBT and list(result["families"]) == [GBT]
    version_dir = base / "1"
    assert ModelMetadata.read(version_dir).model_family == GBT
    history = json.loads((version_dir / TRAIN_HISTORY_FILE).read_text())
    assert history["hparams"]["split_axis"] == SPARSE_OBLIQUE
    assert any(op.startswith(TFDF_OP_PREFIX) for op in saved_model_ops(version_dir))
    table = build_feature_table(read_transactions(data_file), c.DEFAULT_LABEL_DELAY_DAYS).tail(300)
    arrays = input_arrays(table)
    local = SavedModelScorer(version_dir).score(table)
    # The raw-field request of the stream consumer, as JSON: strings as text.
    columns = {
        k: [b.decode() for b in v] if v.dtype.kind == "S" else v.tolist() for k, v in arrays.items()
    }
    assert set(columns) == set(c.MODEL_INPUTS)
    server = start_model_server(base, tmp_path)
    try:
        with ModelClient(server.url, MODEL_NAME) as client:
            answer = client.predict(columns)
        with GrpcModelClient(server.grpc_target, MODEL_NAME) as client:
            grpc_answer = client.predict(columns)
    finally:
        server.stop()
    for served in (answer, grpc_answer):
        assert served.model_version == "1"
        np.testing.assert_allclose(served.scores, local, rtol=1e-5, atol=1e-7)
    fraud = table[c.LABEL].to_numpy() == 1
    if fraud.any():
        assert local[fraud].mean() > local[~fraud].mean()


def test_pipeline_artifacts(pipeline_run):
    _, _, root, _ = pipeline_run
    assert json.loads(_artifact(root, "validate", "anomalies").read_text()) == {}
    assert _artifact(root, "validate", "statistics").stat().st_size > 0
    assert (_artifact(root, "transform", "transform_output") / "transform_fn").is_dir()
    train = pd.read_parquet(_artifact(root, "ingest", "train_data"))
    evaluation = pd.read_parquet(_artifact(root, "ingest", "eval_data"))
    # Evaluation comes after training: the carved window is the end of the period.
    assert train[c.TIMESTAMP].max() < evaluation[c.TIMESTAMP].min()
    assert evaluation[c.TIMESTAMP].max() < pd.Timestamp(TRAIN_END, tz="UTC")
    verdict = json.loads((_artifact(root, "evaluate", "blessing") / "verdict.json").read_text())
    assert verdict["blessed"] and verdict["reasons"] == []
    executor = json.loads(_artifact(root, "evaluate", "executor_output.json").read_text())
    assert "artifacts" in executor


def _executor_metadata(root: Path, step: str, output: str) -> dict:
    """What the step's executor wrote about one output artifact: what the Kubeflow UI shows."""
    executor = json.loads(_artifact(root, step, "executor_output.json").read_text())
    (artifact,) = executor["artifacts"][output]["artifacts"]
    return artifact["metadata"]


def test_evaluate_ui_metrics_hold_the_roc_curve_and_confusion_matrix(pipeline_run):
    _, params, root, _ = pipeline_run
    eval_rows = _executor_metadata(root, "ingest", "counts")["eval_rows"]
    eval_frauds = _executor_metadata(root, "ingest", "counts")["eval_frauds"]
    curves = _executor_metadata(root, "evaluate", "curves")
    roc = curves["confidenceMetrics"]
    assert len(roc) >= 3
    fpr = [p["falsePositiveRate"] for p in roc]
    tpr = [p["recall"] for p in roc]
    thresholds = [p["confidenceThreshold"] for p in roc]
    for values in (fpr, tpr, thresholds):
        assert all(0.0 <= v <= 1.0 for v in values), values
    # One curve from (0, 0) to (1, 1), thresholds falling as the rates rise.
    assert fpr == sorted(fpr) and tpr == sorted(tpr)
    assert thresholds == sorted(thresholds, reverse=True)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    matrix = curves["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == ["legit", "fraud"]
    rows = [r["row"] for r in matrix["rows"]]
    assert sum(map(sum, rows)) == eval_rows and sum(rows[1]) == eval_frauds
    assert rows[1][1] > 0, "the review threshold catches no fraud"
    metrics = _executor_metadata(root, "evaluate", "metrics")
    assert metrics["blessed"] == 1.0 and metrics["auc_roc"] >= GATE["min_auc"]
    assert 0 < metrics["threshold_review"] <= metrics["threshold_block"] <= 1
    pushed = ModelMetadata.read(Path(params["model_base_path"]) / "1")
    assert metrics["auc_roc"] == pytest.approx(pushed.metrics["auc_roc"])


def test_pushed_model_scores_raw_fields_like_batch_scoring(pipeline_run, data_file):
    _, params, _, _ = pipeline_run
    model_dir = Path(params["model_base_path"]) / "1"
    table = build_feature_table(read_transactions(data_file), c.DEFAULT_LABEL_DELAY_DAYS).tail(500)

    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir))
    fn = loaded.signatures[c.SERVING_SIGNATURE]
    # The signature takes exactly the contract's inputs, by name.
    assert set(fn.structured_input_signature[1]) == set(c.MODEL_INPUTS)
    direct = fn(**{k: tf.constant(v) for k, v in input_arrays(table).items()})[c.SCORE_OUTPUT]
    batch = SavedModelScorer(model_dir).score(table)
    np.testing.assert_allclose(direct.numpy(), batch, rtol=1e-6)
    assert ((batch >= 0) & (batch <= 1)).all()
    # Frauds score higher than legitimate transactions on average.
    fraud = table[c.LABEL].to_numpy() == 1
    if fraud.any():
        assert batch[fraud].mean() > batch[~fraud].mean()


def test_fraud_score_cli(pipeline_run, data_file, tmp_path):
    from app.cli import main

    _, params, _, _ = pipeline_run
    out = tmp_path / "scores.csv"
    code = main(
        [
            "score",
            "--model",
            params["model_base_path"],
            "--data",
            str(data_file),
            "--start",
            "2025-03-10",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    scores = pd.read_csv(out)
    assert list(scores.columns) == [c.TRANSACTION_ID, "score", "decision"]
    assert set(scores["decision"]) <= set(c.DECISIONS)
    raw = read_transactions(data_file)
    assert len(scores) == (raw[c.TIMESTAMP] >= pd.Timestamp("2025-03-10", tz="UTC")).sum()


def test_worse_model_is_not_pushed(pipeline_run):
    """A deliberately crippled candidate, through the same evaluate + push steps."""
    from components.evaluate.job import evaluate_step
    from components.push.job import push_step
    from components.train.job import train_step

    _, params, root, _ = pipeline_run
    transform_dir = _artifact(root, "transform", "transform_output")
    work = root / "worse"
    train_step(
        str(transform_dir),
        str(work / "model"),
        {"hidden_units": "1", "epochs": 1, "learning_rate": 1e-6, "dropout": 0.0, "seed": 7},
    )
    verdict, _, _ = evaluate_step(
        str(work / "model"),
        str(_artifact(root, "ingest", "eval_data")),
        params["model_base_path"],
        str(work / "blessing"),
        {"min_auc": 0.0, "min_average_precision": 0.0, "regression_tolerance": 0.05},
    )
    assert verdict.baseline_version == 1
    assert not verdict.blessed and "regresses" in verdict.reasons[0]
    result = push_step(
        str(work / "model"),
        str(work / "blessing"),
        str(_artifact(root, "ingest", "train_data")),
        str(_artifact(root, "validate", "statistics")),
        params["model_base_path"],
        "fraud",
        7,
        {},
    )
    assert result["pushed"] is False and result["reasons"] == verdict.reasons
    assert result["model_family"] == MLP and list(result["families"]) == [MLP]
    assert model_versions(params["model_base_path"]) == [1]
    assert not (Path(params["model_base_path"]) / "2" / METADATA_FILE).exists()


def test_schema_anomaly_fails_validation_and_lists_it(pipeline_run, tmp_path):
    from components.validate.job import validate_step
    from components.validate.validate import SchemaAnomalyError

    _, _, root, _ = pipeline_run
    train = pd.read_parquet(_artifact(root, "ingest", "train_data"))
    train.loc[:10, c.terminal_fraud_ratio("7d")] = 3.0  # a ratio above 1 breaks the schema
    bad = tmp_path / "bad.parquet"
    train.to_parquet(bad)
    anomalies = tmp_path / "anomalies.json"
    with pytest.raises(SchemaAnomalyError, match=c.terminal_fraud_ratio("7d")):
        validate_step(str(bad), "", "", str(tmp_path / "stats.pb"), str(anomalies))
    assert c.terminal_fraud_ratio("7d") in json.loads(anomalies.read_text())
