"""Two engines for the contract's stateful features: ``batch`` (vectorised, whole datasets) and
``stream`` (incremental, one transaction at a time). A parity test holds them equal."""
