"""The KFP components, one folder per pipeline step (``ingest/``, ``validate/``, ``transform/``,
``train/``, ``evaluate/``, ``push/``): the step's logic, its plain job function over file paths
(``job.py``) and its thin KFP wrapper (``component.py``); ``kfp_components.py`` gathers the
wrappers. Batch scoring (``fraud score``) shares their model loading."""
