"""Compare the rain climate of radar stores side by side: a row per statistic, a column per store
(what each row means, and which frames it reads: nowcast.data.climate).

    .venv/bin/python scripts/compare_climate.py STORE.h5 [STORE2.h5 ...] [--frames N] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nowcast.data.climate import DEFAULT_FRAMES, compute_climate, format_climates
from nowcast.data.store import Store
from nowcast.memory import keep_freed_memory


def main(argv: list[str] | None = None) -> int:
    """Print the table; 1 with a one-line message for a store that cannot be compared."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", type=Path, metavar="STORE.h5")
    parser.add_argument(
        "--frames",
        type=int,
        default=DEFAULT_FRAMES,
        help=f"frames read for each statistic of the fields, at most (default {DEFAULT_FRAMES})",
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    # pysteps' motion interpolation makes and drops arrays of hundreds of MB per frame triple.
    keep_freed_memory()
    try:
        # Every store opened first, so that a wrong path fails before minutes of work.
        stores = [Store(path) for path in args.stores]
        climates = [compute_climate(store, frames=args.frames) for store in stores]
    except ValueError as err:  # StoreError among them: their messages name the file
        print(f"compare_climate: {err}", file=sys.stderr)
        return 1
    print(format_climates(climates, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
