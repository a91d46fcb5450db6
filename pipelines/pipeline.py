"""The training pipeline: ingest -> validate (TFDV) -> transform (TFT) -> train -> evaluate -> push.

``create_pipeline()`` builds it; thin runners (pipelines/runners.py) run it locally with
kfp.local, compile it to IR YAML, submit it, or schedule it on a Kubeflow cluster.
"""

from kfp import dsl
from kfp.dsl import Artifact

from components.kfp_components import make_components
from core import contract as c

PIPELINE_NAME = "fraud-training"


def create_pipeline(image: str | None = None):
    """The pipeline function, with its components bound to ``image``."""
    ops = make_components(image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Card-fraud model: TFDV validation, TFT transform, Keras training, "
        "evaluation with a blessing gate, push to the TF Serving layout.",
    )
    def fraud_training(
        data_path: str = "data/validated/transactions.parquet",
        train_start: str = "",
        train_end: str = "",
        eval_start: str = "",
        eval_end: str = "",
        as_of: str = "",
        train_days: int = 0,
        eval_days: int = 0,
        label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS,
        schema_path: str = "",
        beam_args: str = "[]",
        hidden_units: str = "64,32",
        dropout: float = 0.1,
        learning_rate: float = 0.001,
        batch_size: int = 512,
        epochs: int = 20,
        patience: int = 3,
        seed: int = 42,
        min_auc: float = 0.8,
        min_average_precision: float = 0.2,
        regression_tolerance: float = 0.05,
        review_budget: float = 0.01,
        block_budget: float = 0.002,
        model_base_path: str = "models/fraud",
        model_name: str = "fraud",
    ) -> Artifact:
        ingest = ops["ingest"](
            data_path=data_path,
            train_start=train_start,
            train_end=train_end,
            eval_start=eval_start,
            eval_end=eval_end,
            as_of=as_of,
            train_days=train_days,
            eval_days=eval_days,
            label_delay_days=label_delay_days,
        ).set_display_name("ingest + features")
        validate = ops["validate"](
            train_data=ingest.outputs["train_data"],
            schema_path=schema_path,
            model_base_path=model_base_path,
        ).set_display_name("validate (TFDV)")
        transform = ops["transform"](
            train_data=ingest.outputs["train_data"],
            eval_data=ingest.outputs["eval_data"],
            beam_args=beam_args,
        ).set_display_name("transform (TFT)")
        # Never transform or train on data that failed validation.
        transform.after(validate)
        train = ops["train"](
            transform_output=transform.outputs["transform_output"],
            hidden_units=hidden_units,
            dropout=dropout,
            learning_rate=learning_rate,
            batch_size=batch_size,
            epochs=epochs,
            patience=patience,
            seed=seed,
        ).set_display_name("train (Keras)")
        evaluate = ops["evaluate"](
            model=train.outputs["model"],
            eval_data=ingest.outputs["eval_data"],
            model_base_path=model_base_path,
            min_auc=min_auc,
            min_average_precision=min_average_precision,
            regression_tolerance=regression_tolerance,
            review_budget=review_budget,
            block_budget=block_budget,
        ).set_display_name("evaluate + bless")
        push = ops["push"](
            model=train.outputs["model"],
            blessing=evaluate.outputs["blessing"],
            train_data=ingest.outputs["train_data"],
            statistics=validate.outputs["statistics"],
            model_base_path=model_base_path,
            model_name=model_name,
            label_delay_days=label_delay_days,
        ).set_display_name("push (if blessed)")
        return push.outputs["pushed"]

    return fraud_training
