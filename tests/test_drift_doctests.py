"""The seeded examples in the drift checks' docstrings hold, so they cannot rot.

Every module of ``monitoring.checks`` must carry examples; ``doctest`` runs them and any output
other than the one written down fails the test (the report names the example).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import monitoring.checks

CHECK_MODULES = sorted(
    f"{monitoring.checks.__name__}.{info.name}"
    for info in pkgutil.iter_modules(monitoring.checks.__path__)
)


def test_every_check_module_is_found() -> None:
    assert {m.rsplit(".", 1)[1] for m in CHECK_MODULES} >= {
        "alert_rate",
        "distribution",
        "labels",
        "night",
    }


@pytest.mark.parametrize("name", CHECK_MODULES)
def test_docstring_examples_give_their_written_output(name: str) -> None:
    results = doctest.testmod(importlib.import_module(name), report=True)
    assert results.attempted > 0, f"{name}: no docstring example"
    assert results.failed == 0, f"{name}: {results.failed} of {results.attempted} examples failed"
