"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, print them, append to bench/results/.

Benchmarks run in priority order; one that fails is reported (with its
error) and the rest still run, so a partial result is never lost.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from bench.harness import Report, machine_description

#: Benchmark modules in the order they run (the issue's priority order).
BENCHMARKS = ("enqueue", "relay", "latency", "e2e", "cpu", "urgency", "memory", "history")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the chosen benchmarks, save the report; exit 1 if one failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions (< 2 min)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)")
    parser.add_argument("--profile", action="store_true", help="py-spy the Tierbox processes in relay and e2e")
    args = parser.parse_args(argv)
    raw_argv = sys.argv[1:] if argv is None else argv
    header = machine_description(args.quick, raw_argv)
    print(header, flush=True)
    report = Report(quick=args.quick, profile=args.profile)
    failed = False
    t0 = time.monotonic()
    for name in args.only or BENCHMARKS:
        started = time.monotonic()
        try:
            importlib.import_module(f"bench.{name}").run(report, args.quick)
        except Exception:  # noqa: BLE001 - report the failure, keep the other benchmarks' figures
            failed = True
            report.note(f"\n**{name} failed:**\n```\n{traceback.format_exc()[-3000:]}```")
        report.note(f"_({name}: {time.monotonic() - started:.0f} s)_")
    report.note(f"\n_Total: {time.monotonic() - t0:.0f} s_")
    print(f"\nresults appended to {report.save(header)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
