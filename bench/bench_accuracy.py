"""Accuracy bench: the Fraud Detection Handbook's prequential protocol on the ``handbook``
simulator profile, the platform's models side by side with the book's two reference baselines.

    python -m bench.bench_accuracy [--quick] [--families mlp,gbt] [--folds 1,2] [--seed N]
        [--workdir DIR] [--set NAME=VALUE ...]

Four folds whose training weeks start on 2018-07-25, 08-01, 08-08 and 08-15: each trains on 7 days,
skips 7 days of label delay and tests on the next 7. On each test day the cards already known to be
compromised are left out: those with a fraud in the training week, or on a delay day up to the day
before the test day's counterpart in the delay week (the book's ``get_train_test_set``).

Per fold the platform is run as a user runs it: ``fraud pipeline run --train-start --train-end``
(the blessing gate opened, so that every fold's model is pushed and measured) and ``fraud score``
on the test days with the pushed model; ``--families`` runs it once per model family
(``--set model=FAMILY``). The references are a logistic regression and a random forest (100 trees,
depth 20), scikit-learn, on the book's 15 baseline features, standardised on the training week.

Metrics, each the mean ± std over the folds: AUC ROC, average precision, and the book's card
precision@100: per test day, the 100 cards with the highest score that day, the share of them
compromised (divided by 100 even on a day with fewer cards), cards found on an earlier test day left
out; and the Brier score (mean squared error of the score as a probability). The platform's
thresholds come from its alert budgets on the pipeline's evaluation window; per family the share of
the test days' transactions each threshold (review, block) alerts is set against its budget, and a
rate more than 20 % off its budget is flagged. Fidelity of the data is printed beside the book's figures, and the random forest must land
within 0.03 of the book's on every metric for the profile to count as the book's.

``--quick`` runs the same protocol on a small population (mechanics only; it records nothing);
``--folds`` runs some of the four folds (for experiments; it records nothing either, as the recorded
figures are means over all four).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from bench import results
from bench.handbook_protocol import (
    BRIER,
    CEILING,
    FOLD_STARTS,
    METRICS,
    SCORED,
    Fold,
    book_features,
    ceiling_scores,
    fold_numbers,
    fold_test_rows,
    folds,
    metrics,
    reference_scores,
)
from core import contract as c

METRIC_TEXT = {
    "auc_roc": "AUC ROC",
    "average_precision": "AP",
    "card_precision_at_100": "CP@100",
    BRIER: "Brier",
}
# How far (relative) a threshold's alert rate on the test days may stray from its budget.
ALERT_TOLERANCE = 0.2
# The book's random forest under this protocol, and how close ours must land to it.
BOOK_RF = {"auc_roc": 0.870, "average_precision": 0.678, "card_precision_at_100": 0.299}
RF_TOLERANCE = 0.03
# The targets for the platform's models (mean of the folds).
TARGETS = {"auc_roc": 0.89, "average_precision": 0.72, "card_precision_at_100": 0.31}


def alert_rates(decisions: pd.Series) -> dict[str, float]:
    """Share of the transactions each threshold alerts: review counts every score at or above
    the review threshold (blocks included, as the review budget does), block those at or above
    the block threshold."""
    return {
        c.REVIEW: float((decisions != c.APPROVE).mean()),
        c.BLOCK: float((decisions == c.BLOCK).mean()),
    }


def alert_budgets(params: list[str]) -> dict[str, float]:
    """The pipeline's alert budgets (review, block): its defaults unless ``params`` (``--set``
    assignments) set them."""
    from components.evaluate.evaluator import GateConfig
    from pipelines.params import parse_params

    typed = {**asdict(GateConfig()), **parse_params(params)}
    return {c.REVIEW: typed["review_budget"], c.BLOCK: typed["block_budget"]}


def alert_text(rates: dict[str, float], budgets: dict[str, float]) -> str:
    """``review 1.04 % (budget 1.00 %), block ...``; a rate outside the tolerance is flagged."""
    parts = []
    for key, rate in rates.items():
        off = abs(rate / budgets[key] - 1)
        flag = "" if off <= ALERT_TOLERANCE else f" OUTSIDE ±{100 * ALERT_TOLERANCE:.0f} %"
        parts.append(f"{key} {100 * rate:.2f} % (budget {100 * budgets[key]:.2f} %){flag}")
    return ", ".join(parts)


def _fraud(*args: str, log: Path) -> None:
    """``fraud ARGS`` as its own process, its output in ``log``; a failure names the log's end."""
    with log.open("w") as out:
        code = subprocess.call([sys.executable, "-m", "app.cli", *args], stdout=out, stderr=out)
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"fraud {' '.join(args[:2])} exited {code} (log {log}):\n{tail}")


def platform_scores(
    data: Path,
    fold: Fold,
    family: str | None,
    work: Path,
    test: pd.DataFrame,
    params: tuple[str, ...] | list[str] = (),
) -> tuple[np.ndarray, dict[str, float]]:
    """Train with ``fraud pipeline run`` (``params``: its further ``--set NAME=VALUE``) on the
    fold's training week, score its test days with ``fraud score`` and the pushed model; the
    scores of ``test``'s rows, in its order, and the alert rates of its thresholds over every
    transaction of the test days."""
    # A model left by an earlier run in a reused --workdir would be the served baseline: the
    # gate could refuse the new one, and fraud score would measure the old.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = work / "models" / "fraud"
    family_set = ["--set", f"model={family}"] if family else []
    family_set += [arg for pair in params for arg in ("--set", pair)]
    _fraud(
        "pipeline", "run", "--data", str(data),
        "--train-start", str(fold.train_start.date()), "--train-end", str(fold.train_end.date()),
        "--model-base-path", str(base), "--pipeline-root", str(work / "kfp"),
        "--set", "min_auc=0", "--set", "min_average_precision=0", *family_set,
        log=work / "pipeline.log",
    )  # fmt: skip
    scored = work / "scores.parquet"
    _fraud(
        "score", "--model", str(base), "--data", str(data),
        "--start", str(fold.test_start.date()), "--end", str(fold.test_end.date()),
        "--output", str(scored),
        log=work / "score.log",
    )  # fmt: skip
    out = pd.read_parquet(scored)
    by_id = out.set_index(c.TRANSACTION_ID)["score"]
    missing = ~test[c.TRANSACTION_ID].isin(by_id.index)
    if missing.any():
        raise RuntimeError(f"fraud score left {int(missing.sum())} test transactions unscored")
    return by_id.loc[test[c.TRANSACTION_ID]].to_numpy(), alert_rates(out["decision"])


def summary(per_fold: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Per metric, (mean, std) over the folds."""
    return {m: (float(np.mean([f[m] for f in per_fold])), float(np.std([f[m] for f in per_fold])))
            for m in per_fold[0]}  # fmt: skip


def table_text(rows: dict[str, dict[str, tuple[float, float]]]) -> str:
    width = max(len(name) for name in [*rows, "random forest (book)"]) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{METRIC_TEXT[m]:>17}" for m in SCORED)]
    for name, stats in rows.items():
        cells = "".join(f"{'{:.3f} ± {:.3f}'.format(*stats[m]):>17}" for m in SCORED)
        lines.append(f"{name:<{width}}{cells}")
    book = "".join(f"{BOOK_RF[m]:>17.3f}" if m in BOOK_RF else f"{'–':>17}" for m in SCORED)
    lines.append(f"{'random forest (book)':<{width}}{book}")
    return "\n".join(lines)


def fidelity_text(data: dict[str, float], book: dict[str, float]) -> str:
    lines = [f"{'data':<32}{'this run':>12}{'book':>12}"]
    for key, value in data.items():
        text = (lambda v: f"{v:,.0f}") if key == "transactions" else (lambda v: f"{100 * v:.2f} %")
        lines.append(f"{key:<32}{text(value):>12}{text(book[key]):>12}")
    return "\n".join(lines)


def rf_gap(rf: dict[str, tuple[float, float]]) -> float:
    """Largest distance, over the metrics, of our random forest's mean from the book's."""
    return max(abs(rf[m][0] - BOOK_RF[m]) for m in METRICS)


def alert_figures(
    key: str, rates: dict[str, float], budgets: dict[str, float], command: str
) -> list[results.Figure]:
    """Per threshold, how far (relative) the family's mean alert rate on the test days is from
    its budget, against the tolerance."""
    return [
        results.measured(
            f"accuracy.{key}.{which}_alert_rate_off_budget",
            f"{which} alert rate of the platform's {key} model vs its budget, handbook protocol",
            abs(rate / budgets[which] - 1),
            "",
            f"|share of the test days' transactions at or above the {which} threshold / the "
            f"{which} budget - 1|, the share a mean over the 4 folds",
            command,
            results.Target("<=", ALERT_TOLERANCE),
            f"{100 * rate:.2f} % of transactions vs budget {100 * budgets[which]:.2f} %",
        )
        for which, rate in rates.items()
    ]


def figures(
    rows: dict[str, dict[str, tuple[float, float]]],
    platform: dict[str, str],
    alerts: dict[str, dict[str, float]],
    budgets: dict[str, float],
    data: dict[str, float],
    seconds: float,
    command: str,
) -> list[results.Figure]:
    """Per platform family (``platform``: family -> row name) its three metrics against the
    targets, its Brier score and its alert rates (``alerts``: family -> mean rate per threshold)
    against the budgets, with the reference's and the oracle ceiling's means beside each
    metric; the random forest's distance from the book's (the profile's fidelity);
    the data's fraud rate; the run's wall time."""
    out = []
    for key, name in platform.items():
        ref = rows["random forest"]
        mean, std = rows[name][BRIER]
        out.append(
            results.measured(
                f"accuracy.{key}.{BRIER}",
                f"Brier score of the platform's {key} model, handbook protocol",
                mean,
                "",
                "mean over the 4 prequential folds of the mean squared error of the score "
                "on the test days",
                command,
                detail=f"{mean:.4f} ± {std:.4f}; random forest reference {ref[BRIER][0]:.4f}",
            )
        )
        out += alert_figures(key, alerts[key], budgets, command)
        for m in METRICS:
            mean, std = rows[name][m]
            out.append(
                results.measured(
                    f"accuracy.{key}.{m}",
                    f"{METRIC_TEXT[m]} of the platform's {key} model, handbook protocol",
                    mean,
                    "",
                    f"mean over the 4 prequential folds of the {METRIC_TEXT[m]} on the test days",
                    command,
                    results.Target(">=", TARGETS[m]),
                    f"{mean:.3f} ± {std:.3f}; random forest reference {ref[m][0]:.3f}; "
                    f"ceiling {rows[CEILING][m][0]:.3f}",
                )
            )
    rf, lr = rows["random forest"], rows["logistic regression"]
    out.append(
        results.measured(
            "accuracy.rf_gap_to_book",
            "random forest reference on the handbook profile: largest gap to the book's",
            rf_gap(rf),
            "",
            "max over AUC, AP, CP@100 of |our random forest's fold mean - the book's|",
            command,
            results.Target("<=", RF_TOLERANCE),
            "RF "
            + " / ".join(f"{rf[m][0]:.3f}" for m in METRICS)
            + " vs book "
            + " / ".join(f"{BOOK_RF[m]:.3f}" for m in METRICS)
            + "; logreg "
            + " / ".join(f"{lr[m][0]:.3f}" for m in METRICS),
        )
    )
    out.append(
        results.measured(
            "accuracy.data_fraud_pct",
            "handbook profile: fraud rate (book: 0.84 %)",
            100 * data["fraud_rate"],
            "%",
            "share of fraudulent transactions in the generated data",
            command,
            detail=f"{data['transactions']:,.0f} tx; scenario shares "
            + ", ".join(f"{100 * v:.1f} %" for k, v in data.items() if k.startswith("share_")),
        )
    )
    out.append(
        results.measured(
            "accuracy.total_seconds",
            "bench_accuracy wall time (generation, 4 folds of pipeline + score, references)",
            seconds,
            "s",
            "wall seconds of python -m bench.bench_accuracy",
            command,
        )
    )
    return out


def handbook_data(work: Path, seed: int, quick: bool) -> tuple[pd.DataFrame, Path]:
    """The profile's transactions and their file in ``work``: generated once per seed and size,
    read back on a later run with the same ``work``."""
    from core.dataio import read_transactions, write_transactions
    from core.handbook import HandbookConfig, simulate_handbook

    path = work / f"handbook-seed{seed}{'-quick' if quick else ''}.parquet"
    if path.exists():
        return read_transactions(path), path
    size = {"n_customers": 500} if quick else {}
    df = simulate_handbook(HandbookConfig(seed=seed, **size))
    write_transactions(df, path)
    return df, path


def main(argv: list[str] | None = None) -> int:
    from core.handbook import book_fidelity, fidelity
    from core.metadata import MODEL_FAMILIES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="a tenth of the customers (500), every terminal"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--families",
        default=",".join(MODEL_FAMILIES),
        help="comma-separated model families, each run as --set model=FAMILY (default: every "
        "family; an empty list runs the pipeline's default model)",
    )
    p.add_argument(
        "--folds",
        default=",".join(str(i) for i in range(1, len(FOLD_STARTS) + 1)),
        help="comma-separated fold numbers to run, 1 to 4 (default: all four; fewer record "
        "nothing)",
    )
    p.add_argument(
        "--workdir", type=Path, help="working directory; the generated data is reused from it"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline parameter for every fold's fraud pipeline run (repeatable)",
    )
    results.add_arguments(p)
    args = p.parse_args(argv)
    try:
        chosen = fold_numbers(args.folds)
    except ValueError as e:
        p.error(str(e))
    started = time.monotonic()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    df, data = handbook_data(work, args.seed, args.quick)
    data_fidelity = fidelity(df)
    print(f"data: {len(df):,} transactions in {work}\n")
    print(fidelity_text(data_fidelity, book_fidelity()))

    table = book_features(df)
    families = [f.strip() for f in args.families.split(",") if f.strip()] or [None]
    platform = {family or "default": f"platform ({family or 'default'})" for family in families}
    budgets = alert_budgets(args.set)
    per_fold: dict[str, list[dict[str, float]]] = {}
    fold_alerts: dict[str, list[dict[str, float]]] = {}
    for i, fold in enumerate(folds()):
        if i + 1 not in chosen:
            continue
        test = fold_test_rows(table, fold)
        scores = reference_scores(table, fold, test)
        scores[CEILING] = ceiling_scores(table, test)
        for family in families:
            key = family or "default"
            where = work / f"fold{i + 1}" / key
            scores[platform[key]], rates = platform_scores(
                data, fold, family, where, test, args.set
            )
            fold_alerts.setdefault(key, []).append(rates)
        for name, s in scores.items():
            per_fold.setdefault(name, []).append(metrics(test, s))
        print(
            f"\nfold {i + 1}: train [{fold.train_start.date()}, {fold.train_end.date()}), "
            f"test [{fold.test_start.date()}, {fold.test_end.date()}): {len(test):,} test tx, "
            f"{int(test[c.LABEL].sum())} frauds"
        )
        for name, m in per_fold.items():
            print(f"  {name:<28}" + "  ".join(f"{METRIC_TEXT[k]} {m[-1][k]:.3f}" for k in SCORED))
        for key, rates in fold_alerts.items():
            print(f"  {platform[key]:<28}alerts: {alert_text(rates[-1], budgets)}")

    rows = {name: summary(per_fold[name]) for name in [*platform.values(), "logistic regression",
                                                        "random forest", CEILING]}  # fmt: skip
    seconds = time.monotonic() - started
    alerts = {key: summary(rates) for key, rates in fold_alerts.items()}
    mean_alerts = {key: {k: mean for k, (mean, _) in a.items()} for key, a in alerts.items()}
    print(f"\n{table_text(rows)}\n")
    for key, rates in mean_alerts.items():
        print(f"{platform[key]} alert rates on the test days: {alert_text(rates, budgets)}")
    gap = rf_gap(rows["random forest"])
    print(
        f"random forest vs the book: largest gap {gap:.3f} "
        f"({'within' if gap <= RF_TOLERANCE else 'OUTSIDE'} ±{RF_TOLERANCE})"
    )
    print(f"wall time {seconds:.0f} s")
    if args.quick or len(chosen) < len(FOLD_STARTS):
        print("--quick or --folds: not the whole protocol, nothing recorded")
    else:
        command = results.command_line("bench.bench_accuracy", argv)
        results.publish(
            args, figures(rows, platform, mean_alerts, budgets, data_fidelity, seconds, command)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
