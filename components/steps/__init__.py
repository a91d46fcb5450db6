"""Plain, importable, unit-tested code behind each KFP component (components/kfp_components.py)."""
