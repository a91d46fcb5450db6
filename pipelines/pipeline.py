"""The training pipeline: ingest -> validate (TFDV) -> transform (TFT) -> train -> evaluate -> push.

``create_pipeline()`` builds it; thin runners (pipelines/runners.py) run it locally with
kfp.local, compile it to IR YAML, submit it, or schedule it on a Kubeflow cluster;
pipelines/ir_runner.py runs the compiled IR in containers, as a cluster does.

On a cluster each step runs in a pod of its own: the data comes from the ``data_pvc`` claim
mounted at ``DATA_MOUNT`` in the ingest pod (``data_path`` names the file there), and the models
live on the ``models_pvc`` claim mounted at ``MODELS_MOUNT`` in the pods that read or write them
(``model_base_path`` under it). Ingest receives the run's schedule time: a run given no
``as_of`` and no training dates trains on the relative windows that end at that time.
"""

from kfp import dsl, kubernetes
from kfp.dsl import Artifact

from components.evaluate.evaluator import GateConfig
from components.kfp_components import make_components
from components.train.gbt import GBTParams
from components.train.trainer import HParams
from core.metadata import MLP
from core.settings import Settings

PIPELINE_NAME = "fraud-training"
# Where the claims are mounted: the image's mount points, as in the Kubernetes manifests.
DATA_MOUNT = "/data"
MODELS_MOUNT = "/models"
DATA_PVC = "fraud-data"
MODELS_PVC = "fraud-models"


def create_pipeline(image: str | None = None):
    """The pipeline function, with its components bound to ``image``.

    Its defaults are those of ``HParams`` (training), ``GateConfig`` (the blessing gate) and
    ``Settings`` (paths and names): restated nowhere else.
    """
    ops = make_components(image)
    hp, gate, settings = HParams(), GateConfig(), Settings()
    gbt = GBTParams()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Card-fraud model: TFDV validation, TFT transform, Keras training, "
        "evaluation with a blessing gate, push to the TF Serving layout.",
    )
    def fraud_training(
        data_path: str = str(settings.validated_data),
        train_start: str = "",
        train_end: str = "",
        eval_start: str = "",
        eval_end: str = "",
        as_of: str = "",
        train_days: int = 0,
        eval_days: int = 0,
        label_delay_days: int = settings.label_delay_days,
        schema_path: str = "",
        beam_args: str = "[]",
        hidden_units: str = hp.hidden_units,
        dropout: float = hp.dropout,
        learning_rate: float = hp.learning_rate,
        batch_size: int = hp.batch_size,
        epochs: int = hp.epochs,
        patience: int = hp.patience,
        seed: int = hp.seed,
        model: str = MLP,
        gbt_num_trees: int = gbt.num_trees,
        gbt_max_depth: int = gbt.max_depth,
        gbt_shrinkage: float = gbt.shrinkage,
        gbt_min_examples: int = gbt.min_examples,
        gbt_split_axis: str = gbt.split_axis,
        min_auc: float = gate.min_auc,
        min_average_precision: float = gate.min_average_precision,
        regression_tolerance: float = gate.regression_tolerance,
        review_budget: float = gate.review_budget,
        block_budget: float = gate.block_budget,
        model_base_path: str = str(settings.model_base_path),
        model_name: str = settings.model_name,
        data_pvc: str = DATA_PVC,
        models_pvc: str = MODELS_PVC,
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
            schedule_time=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER,
        ).set_display_name("ingest + features")
        kubernetes.mount_pvc(ingest, pvc_name=data_pvc, mount_path=DATA_MOUNT)
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
            model_families=model,
            gbt_num_trees=gbt_num_trees,
            gbt_max_depth=gbt_max_depth,
            gbt_shrinkage=gbt_shrinkage,
            gbt_min_examples=gbt_min_examples,
            gbt_split_axis=gbt_split_axis,
        ).set_display_name("train (Keras MLP / TF-DF GBT)")
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
            model=evaluate.outputs["chosen"],
            blessing=evaluate.outputs["blessing"],
            train_data=ingest.outputs["train_data"],
            statistics=validate.outputs["statistics"],
            model_base_path=model_base_path,
            model_name=model_name,
            label_delay_days=label_delay_days,
        ).set_display_name("push (if blessed)")
        # The steps that read or write model_base_path: the baseline, the previous schema, push.
        for task in (validate, evaluate, push):
            kubernetes.mount_pvc(task, pvc_name=models_pvc, mount_path=MODELS_MOUNT)
        return push.outputs["pushed"]

    return fraud_training
