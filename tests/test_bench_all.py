"""``make bench`` runs ``bench.all``: its list must name the benches that exist."""

from __future__ import annotations

import importlib.util

import pytest

from bench import all as bench_all


def test_every_listed_bench_exists() -> None:
    for name in bench_all.BENCHES:
        assert importlib.util.find_spec(f"bench.bench_{name}") is not None, name


def test_unknown_bench_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_all.main(["--only", "stream,nope"])
    assert exc.value.code == 2
    assert "unknown bench(es): nope" in capsys.readouterr().err
