"""The benchmark results file and the README table rendered from it.

Every bench records its figures in one file, ``bench/results.json``: per figure its name, value,
unit, what the value means, its target, the date, the machine (cores, RAM, CPU model) and the
command that measured it. A bench replaces the figures it measured and leaves the others as they
are; each write merges under a file lock and lands atomically (a reader sees the old file or the
new one). README.md's benchmark table, between ``<!-- bench:start -->`` and
``<!-- bench:end -->``, is rendered from that file; ``tests/test_bench_results.py`` fails when
the two differ.

    python -m bench.results            # rewrite README.md's table from bench/results.json
    python -m bench.results --check    # exit 1 when README.md's table differs from it
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import operator
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import statefile

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.json"
README = REPO / "README.md"
START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
FORMAT = "fraud-bench-results"
VERSION = 1
_REMEDY = "fix it by hand (git log -p bench/results.json shows earlier contents) or restore it"
# A figure meets its target when ``OPS[op](value, target)`` holds.
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_OP_TEXT = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}


class ResultsError(ValueError):
    """A results file or README this module cannot use; the message names it and what is wrong."""


@dataclass(frozen=True)
class Machine:
    """Where a figure was measured; ``None`` where the source did not record it."""

    cores: int | None
    ram_gib: float | None
    cpu: str | None
    note: str = ""

    def describe(self) -> str:
        parts = [f"{self.cores} cores" if self.cores else "cores not recorded"]
        if self.cpu:
            parts.append(self.cpu)
        if self.ram_gib:
            parts.append(f"{self.ram_gib:g} GiB RAM")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)


@dataclass(frozen=True)
class Target:
    """The value a figure must reach: ``value op threshold`` holds when it is met."""

    op: str
    threshold: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ResultsError(f"target operator {self.op!r} is not one of {sorted(OPS)}")

    def met(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Figure:
    """One measured figure.

    ``name`` is the stable key (``<bench>.<figure>``) a later run replaces; ``label`` is the
    README row's text; ``meaning`` says what the value is (for a ratio, what it divides by
    what); ``detail`` is the context printed beside the value. ``date`` is ``YYYY-MM-DD`` or
    ``None`` when the source did not record it.
    """

    name: str
    label: str
    value: float
    unit: str
    meaning: str
    target: Target | None
    date: str | None
    machine: Machine
    command: str
    detail: str = ""

    def value_text(self) -> str:
        text = f"{self.value:,.{_decimals(self.value)}f}"
        if self.unit == "x":
            return f"{text}×"
        return f"{text} {self.unit}" if self.unit else text

    def target_text(self) -> str:
        if self.target is None:
            return "–"
        op = _OP_TEXT[self.target.op]
        limit = f"{self.target.threshold:,g}"
        unit = "×" if self.unit == "x" else f" {self.unit}" if self.unit else ""
        verdict = "met" if self.target.met(self.value) else "**missed**"
        return f"{op} {limit}{unit}: {verdict}"


def _decimals(value: float) -> int:
    """Digits after the point: one for tens and hundreds, two below ten, none for whole numbers
    and thousands."""
    magnitude = abs(value)
    if magnitude >= 1000 or float(value).is_integer():
        return 0
    return 1 if magnitude >= 10 else 2 if magnitude >= 0.1 else 3


def this_machine(note: str = "") -> Machine:
    """The machine this process runs on: cores, RAM and CPU model from /proc (Linux)."""
    return Machine(os.cpu_count(), _ram_gib(), _cpu_model(), note)


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return models[0] if models else None


def _ram_gib() -> float | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


# Options that say where a run worked or wrote, not what it measured: a reader re-running the
# command needs none of them, and they would put one machine's paths in the README.
WHERE_OPTIONS = ("--workdir", "--results", "--keep")


def command_line(module: str, argv: list[str] | None) -> str:
    """How ``module`` was run: ``python -m module`` and its arguments but ``WHERE_OPTIONS``.

    >>> command_line("bench.x", ["--workdir", "/w", "--set", "a=1", "--results=r.json"])
    'python -m bench.x --set a=1'
    """
    args = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in WHERE_OPTIONS:
            skip_value = "=" not in arg and name != "--keep"
            continue
        kept.append(arg)
    return shlex.join(["python", "-m", module, *kept])


def measured(
    name: str,
    label: str,
    value: float,
    unit: str,
    meaning: str,
    command: str,
    target: Target | None = None,
    detail: str = "",
) -> Figure:
    """A figure measured today on this machine."""
    today = dt.datetime.now(dt.UTC).date().isoformat()
    return Figure(
        name, label, float(value), unit, meaning, target, today, this_machine(), command, detail
    )


# --- the file ------------------------------------------------------------------------------


def load(path: Path = RESULTS) -> list[Figure]:
    """The figures of ``path`` in file order; an absent file holds none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not JSON ({err}): {_REMEDY}") from err
    statefile.check(document, FORMAT, VERSION, str(path), _REMEDY)
    figures = []
    for i, raw in enumerate(document.get("figures", [])):
        with statefile.reading(f"{path}: figure {i} ({_name_of(raw)})", FORMAT, _REMEDY):
            figures.append(_figure(raw))
    names = [f.name for f in figures]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ResultsError(f"{path}: figure name(s) listed twice: {', '.join(repeated)}")
    return figures


def _name_of(raw: Any) -> str:
    return repr(raw.get("name")) if isinstance(raw, dict) else "not an object"


def _figure(raw: dict[str, Any]) -> Figure:
    fields = dict(raw)
    fields["machine"] = Machine(**fields["machine"])
    target = fields.get("target")
    fields["target"] = None if target is None else Target(**target)
    figure = Figure(**fields)
    for key in ("name", "label", "unit", "meaning", "command", "detail"):
        if not isinstance(getattr(figure, key), str):
            raise ValueError(f"{key} must be a string, got {getattr(figure, key)!r}")
    if isinstance(figure.value, bool) or not isinstance(figure.value, int | float):
        raise ValueError(f"value must be a number, got {figure.value!r}")
    if figure.date is not None:
        dt.date.fromisoformat(figure.date)
    return figure


def merge(old: Iterable[Figure], new: Iterable[Figure]) -> list[Figure]:
    """``old`` with each figure of ``new`` in place of the one of the same name (in its row),
    and the figures of new names appended."""
    merged = {f.name: f for f in old}
    for figure in new:
        merged[figure.name] = figure
    return list(merged.values())


def dumps(figures: Iterable[Figure]) -> str:
    body = {"figures": [asdict(f) for f in figures]}
    return json.dumps(statefile.stamp(FORMAT, VERSION, body), indent=2, ensure_ascii=False) + "\n"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialises read-merge-write cycles of ``path`` between processes.

    The lock is on the directory: the file itself is replaced by each write, so a lock on it
    would be on an inode the next writer no longer opens.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record(figures: Iterable[Figure], path: Path = RESULTS, readme: Path | None = README) -> None:
    """Merge ``figures`` into the results file and re-render ``readme``'s table from it (no
    README when ``readme`` is None)."""
    with _locked(path):
        merged = merge(load(path), figures)
        _write_atomically(path, dumps(merged))
        if readme is not None:
            _write_atomically(readme, with_table(readme.read_text(), merged, readme))


# --- the README table ----------------------------------------------------------------------


def render(figures: Iterable[Figure]) -> str:
    """The README table: one row per figure."""
    lines = [
        "| what | figure | target | date | machine | command |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        value = f"{f.value_text()} ({f.detail})" if f.detail else f.value_text()
        cells = [
            f.label,
            value,
            f.target_text(),
            f.date or "not recorded",
            f.machine.describe(),
            f"`{f.command}`",
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def _markers(text: str, where: Path) -> tuple[int, int]:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start or text.count(START) > 1 or text.count(END) > 1:
        raise ResultsError(
            f"{where}: needs exactly one {START} followed by one {END} around the benchmark table"
        )
    return start + len(START), end


def table_in(text: str, where: Path = README) -> str:
    """The table between the markers of a README's text."""
    start, end = _markers(text, where)
    return text[start:end].strip("\n")


def with_table(text: str, figures: Iterable[Figure], where: Path = README) -> str:
    """A README's text with the table between its markers rendered from ``figures``."""
    start, end = _markers(text, where)
    return f"{text[:start]}\n{render(figures)}\n{text[end:]}"


# --- the benches' command line -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--results FILE`` and ``--no-record``, for a bench's parser."""
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="results file to merge the figures into (README.md's table follows the default one)",
    )
    parser.add_argument(
        "--no-record", action="store_true", help="print the figures, record them nowhere"
    )


def publish(args: argparse.Namespace, figures: list[Figure]) -> None:
    """Record ``figures`` as a bench's ``args`` say, and say where."""
    if args.no_record:
        return
    readme = README if args.results.resolve() == RESULTS else None
    record(figures, args.results, readme)
    print(
        f"recorded {len(figures)} figure(s) in {args.results}"
        + (" and README.md" if readme else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.results", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args(argv)
    figures = load(RESULTS)
    text = README.read_text()
    if args.check:
        if table_in(text) != render(figures):
            print(
                f"{README}: the benchmark table differs from {RESULTS}; run python -m bench.results"
            )
            return 1
        return 0
    with _locked(RESULTS):
        _write_atomically(README, with_table(README.read_text(), load(RESULTS)))
    print(f"{README}: benchmark table rendered from {RESULTS} ({len(figures)} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
