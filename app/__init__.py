"""The application layer: the ``fraud`` command line and the end-to-end demo. It wires the parts
together (for instance the retrain trigger with a pipeline runner); no part imports it."""
