"""The KFP components: one plain, importable module per step under ``steps/`` and the thin KFP
wrappers in ``kfp_components.py``; batch scoring (``fraud score``) shares their model loading."""
