"""The pipeline's KFP v2 components, one per step folder (``components/<step>/component.py``).

Each body only converts KFP artifacts to paths, calls the plain step (``components/<step>/job.py``)
and logs metrics. Heavy imports live inside the bodies: KFP ships each body's source to its
container on its own.
"""

import os

from kfp import dsl

from components.evaluate.component import evaluate
from components.ingest.component import ingest
from components.push.component import push
from components.train.component import train
from components.transform.component import transform
from components.validate.component import validate

DEFAULT_IMAGE = "ghcr.io/fraud-platform/fraud:0.1.0"

STEPS = (ingest, validate, transform, train, evaluate, push)


def component_image() -> str:
    """The image the compiled pipeline references: FRAUD_COMPONENT_IMAGE or the default."""
    return os.environ.get("FRAUD_COMPONENT_IMAGE", DEFAULT_IMAGE)


def make_components(image: str | None = None) -> dict:
    """KFP components for every step, on ``image``; no network at run time (no pip install)."""
    image = image or component_image()
    return {
        fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False) for fn in STEPS
    }
