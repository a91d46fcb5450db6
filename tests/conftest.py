"""Shared fixtures: the foundation tests' simulations (schema, simulator, features, DVC) here,
and, registered as plugins, those of the tests on real parts (tests/stream_fixtures.py: tiny
models, broker, model server; tests/prometheus_fixtures.py: Prometheus, Alertmanager and a
webhook receiver)."""

from __future__ import annotations

import pandas as pd
import pytest

from core.simulator import SimulationConfig, simulate

pytest_plugins = ["stream_fixtures", "prometheus_fixtures", "image_fixtures"]

# Default rates and a default-like population density (customers per terminal), at a size that
# simulates in about a second.
DEFAULT_LIKE = SimulationConfig(n_customers=1_500, n_terminals=3_000, n_days=60, seed=11)


@pytest.fixture(scope="session")
def default_cfg() -> SimulationConfig:
    return DEFAULT_LIKE


@pytest.fixture(scope="session")
def default_like() -> pd.DataFrame:
    """A seeded simulation with the default fraud rates (no drift). Do not modify it."""
    return simulate(DEFAULT_LIKE)
