"""The data jobs behind `fraud data ...` and `fraud features build` (and the DVC stages)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import yaml

from core import contract as c
from core.dataio import read_transactions, write_transactions
from core.features.batch import build_feature_table
from core.simulator import SimulationConfig, simulate, summarize


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: parameters file not found")
    with path.open() as fh:
        return yaml.safe_load(fh) or {}


def simulation_config(params: dict | None = None, **overrides) -> SimulationConfig:
    known = set(SimulationConfig.__dataclass_fields__)
    values = dict((params or {}).get("simulate", {}))
    unknown = set(values) - known
    if unknown:
        raise ValueError(
            f"params.yaml simulate: unknown key(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SimulationConfig(**values)


def run_simulate(cfg: SimulationConfig, output: Path) -> pd.DataFrame:
    df = simulate(cfg)
    write_transactions(df, output)
    return df


def run_validate(
    input_path: Path, output: Path, skip_invalid: bool, rejects: Path | None, report: Path | None
) -> dict:
    rejects = rejects or output.with_name(output.name.split(".")[0] + ".rejects.csv")
    if rejects.exists():
        rejects.unlink()  # a stale rejects file from an earlier run would mislead
    df = read_transactions(input_path, skip_invalid=skip_invalid, rejects_path=rejects)
    write_transactions(df, output)
    n_rejected = len(pd.read_csv(rejects)) if rejects.exists() else 0
    summary = {
        "input": str(input_path),
        "rows_valid": len(df),
        "rows_rejected": n_rejected,
        "rejects_file": str(rejects) if n_rejected else None,
        "fraud_rate": float(df[c.LABEL].mean()) if len(df) else 0.0,
    }
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_features(input_path: Path, output: Path, label_delay_days: int) -> pd.DataFrame:
    df = read_transactions(input_path)
    table = build_feature_table(df, label_delay_days)
    write_transactions(table, output)
    return table


def data_version(path: str | Path, dvc_lock: str | Path = "dvc.lock") -> str:
    """The DVC hash of a data file as recorded in dvc.lock, else the file's own md5."""
    path = Path(path)
    lock = Path(dvc_lock)
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                if Path(out.get("path", "")).resolve() == path.resolve() and "md5" in out:
                    return f"dvc:md5:{out['md5']}"
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"md5:{h.hexdigest()}"


def format_summary(raw: pd.DataFrame, features: pd.DataFrame | None, head: int = 5) -> str:
    lines = [f"rows: {len(raw):,}   fraud rate: {100 * raw[c.LABEL].mean():.3f} %"]
    if len(raw):
        lines.append(
            f"period: {raw[c.TIMESTAMP].min():%Y-%m-%d} .. {raw[c.TIMESTAMP].max():%Y-%m-%d}   "
            f"customers: {raw[c.CUSTOMER_ID].nunique():,}   terminals: {raw[c.TERMINAL_ID].nunique():,}"
        )
    if c.FRAUD_PATTERN in raw.columns:
        lines += ["", "by pattern:", summarize(raw).to_string(float_format=lambda x: f"{x:.3f}")]
    if features is not None:
        cols = [c.TRANSACTION_ID, c.AMOUNT, *c.STATEFUL_FEATURES]
        with pd.option_context("display.width", 200, "display.max_columns", 8):
            lines += ["", "feature table head:", features[cols].head(head).T.to_string()]
    return "\n".join(lines)
