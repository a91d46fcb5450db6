"""Every benchmark in turn, each as its own process (``make bench``).

    python -m bench.all [--only data,serving,stream,pipeline,accuracy] [--results FILE | --no-record]

Each bench prints its own table of ratios measured side by side and records its figures in
bench/results.json and README.md's table (``bench.results``); this runs them one after the
other (never in parallel: they would share the two cores and skew each other), records the wall
time of the whole run, and ends with one line per bench saying whether it exited cleanly. The
pipeline and accuracy benches take about ten and fifteen minutes, the others a few minutes each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench import results

BENCHES = ("data", "serving", "stream", "shadow", "pipeline", "accuracy")


def figure(timings: list[tuple[str, int, float]], command: str) -> results.Figure:
    """The recorded wall time of one run of ``timings`` (bench, exit code, seconds)."""
    names = [name for name, _, _ in timings]
    label = (
        "every bench, one after the other"
        if names == list(BENCHES)
        else "benches " + ", ".join(names)
    )
    return results.measured(
        "all.total_seconds",
        f"`make bench` wall time ({label})",
        sum(seconds for _, _, seconds in timings),
        "s",
        "wall seconds of python -m bench.all, each bench as its own process",
        command,
        detail=", ".join(
            f"{name} {seconds:.0f}" + ("" if code == 0 else f" (exit {code})")
            for name, code, seconds in timings
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(BENCHES),
        help=f"comma-separated subset of {', '.join(BENCHES)}",
    )
    results.add_arguments(parser)
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    record = ["--no-record"] if args.no_record else ["--results", str(args.results)]
    timings: list[tuple[str, int, float]] = []
    for name in chosen:
        print(f"\n=== bench.bench_{name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.bench_{name}", *record])
        timings.append((name, code, time.monotonic() - started))
    print("\n=== summary ===")
    for name, code, seconds in timings:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"bench_{name:<9} {status:<18} {seconds:7.0f} s")
    results.publish(args, [figure(timings, results.command_line("bench.all", argv))])
    return 0 if all(code == 0 for _, code, _ in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
