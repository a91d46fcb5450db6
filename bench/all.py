"""Every benchmark in turn, each as its own process (``make bench``).

    python -m bench.all [--only data,serving,stream,pipeline]

Each bench prints its own table of ratios measured side by side; this runs them one after the
other (never in parallel: they would share the two cores and skew each other) and ends with one
line per bench saying whether it exited cleanly. The pipeline bench takes about ten minutes, the
others a few minutes each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHES = ("data", "serving", "stream", "pipeline")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(BENCHES),
        help=f"comma-separated subset of {', '.join(BENCHES)}",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    results: list[tuple[str, int, float]] = []
    for name in chosen:
        print(f"\n=== bench.bench_{name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.bench_{name}"])
        results.append((name, code, time.monotonic() - started))
    print("\n=== summary ===")
    for name, code, seconds in results:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"bench_{name:<9} {status:<18} {seconds:7.0f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
