"""The compiled pipeline YAML run the way a Kubeflow cluster runs it (pipelines/ir_runner.py):
each task in its own container of the platform image, with the command of its compiled
executor spec, no repository mount, a read-only root filesystem and the image's non-root user,
and nothing of this machine but its input artifacts (read-only), its output directory and the
claims its platform spec mounts: the data claim for ingest, the models claim for validate,
evaluate and push.

The run goes end to end: the pushed model lands on the models volume, where the embedded model
server loads it and answers a predict with the scores the SavedModel gives. A task that reads a
path outside what is bound in fails the run, naming the task and the path.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from image_fixtures import Containers
from stream_fixtures import start_model_server

from core import contract as c
from core.dataio import read_transactions, write_transactions
from core.features.batch import build_feature_table
from core.metadata import ModelMetadata
from core.model import SavedModelScorer, input_arrays
from core.simulator import SimulationConfig, simulate
from pipelines.ir_runner import Engine, run_compiled
from pipelines.pipeline import DATA_PVC, MODELS_PVC
from pipelines.runners import compile_pipeline

pytestmark = pytest.mark.slow

RUN_TIME = datetime(2025, 3, 15, 2, 30, tzinfo=UTC)
UID = 10001


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The claims' directories: the dataset on the data claim, an empty models claim."""
    root = tmp_path_factory.mktemp("claims")
    data, models = root / "data", root / "models"
    data.mkdir()
    models.mkdir()
    models.chmod(0o777)  # written by the image's user, as fsGroup allows on a cluster
    frame = simulate(SimulationConfig(n_customers=400, n_terminals=800, n_days=75, seed=3))
    write_transactions(frame, data / "transactions.parquet")
    return {DATA_PVC: data, MODELS_PVC: models}


@pytest.fixture(scope="module")
def package(platform_image: Containers, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline compiled for the platform image, as `fraud pipeline compile --image`."""
    return compile_pipeline(tmp_path_factory.mktemp("ir") / "pipeline.yaml", platform_image.image)


def params(**extra: object) -> dict:
    """A relative-window run: its windows end at the run's schedule time."""
    return {
        "data_path": "/data/transactions.parquet",
        "train_days": 21,
        "eval_days": 7,
        "model_base_path": "/models/fraud",
        "epochs": 2,
        "min_auc": 0.6,
        "min_average_precision": 0.05,
        **extra,
    }


def test_the_compiled_pipeline_runs_in_containers_to_a_served_model(
    platform_image: Containers, package: Path, volumes: dict[str, Path], tmp_path: Path
) -> None:
    engine = Engine(platform_image.engine, platform_image.env)
    output = run_compiled(package, params(), tmp_path / "work", volumes, engine, RUN_TIME)
    result = json.loads(output.read_text())
    assert result["pushed"] and result["version"] == 1, result
    assert result["path"] == "/models/fraud/1" and result["serving"] == "unmanaged"
    version_dir = volumes[MODELS_PVC] / "fraud" / "1"
    # Written by the image's non-root user, through the models claim only.
    assert version_dir.stat().st_uid == UID
    meta = ModelMetadata.read(version_dir)
    end = pd.Timestamp(RUN_TIME).normalize() - pd.Timedelta(days=c.DEFAULT_LABEL_DELAY_DAYS)
    assert meta.windows["eval_end"] == end.isoformat()
    assert meta.data_version.startswith(("md5:", "dvc:"))
    # Downstream tasks received the metadata upstream executors wrote.
    assert meta.windows["train_start"] == (end - pd.Timedelta(days=28)).isoformat()

    table = build_feature_table(
        read_transactions(volumes[DATA_PVC] / "transactions.parquet"), c.DEFAULT_LABEL_DELAY_DAYS
    ).tail(64)
    server = start_model_server(version_dir.parent, tmp_path / "server")
    try:
        from serving.client import ModelClient

        # JSON carries the string inputs as text.
        inputs = {
            k: [x.decode() for x in v] if v.dtype.kind == "S" else v.tolist()
            for k, v in input_arrays(table).items()
        }
        answer = ModelClient(server.url, "fraud").predict(inputs)
    finally:
        server.stop()
    assert answer.model_version == "1"
    np.testing.assert_allclose(answer.scores, SavedModelScorer(version_dir).score(table), rtol=1e-5)


def test_a_task_reads_nothing_outside_its_mounts(
    platform_image: Containers, package: Path, volumes: dict[str, Path], tmp_path: Path
) -> None:
    """The dataset's path on this machine exists, but not in the ingest task's container."""
    engine = Engine(platform_image.engine, platform_image.env)
    host_path = str(volumes[DATA_PVC] / "transactions.parquet")
    with pytest.raises(RuntimeError, match=r"task 'ingest' exited(.|\n)*transactions\.parquet"):
        run_compiled(
            package, params(data_path=host_path), tmp_path / "work", volumes, engine, RUN_TIME
        )
    assert not (tmp_path / "work" / "validate").exists()
