"""Screenshots of a report for the README, taken by the same headless Chromium as the tests.

    lavise demo --out lavise-out
    python scripts/report_screenshot.py lavise-out/report docs/report-index.png [--filter 938 docs/report-filter.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lavise.report.browser import screenshot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="report folder (lavise report --out)")
    p.add_argument("png", type=Path, help="screenshot of the index page")
    p.add_argument("--filter", nargs=2, metavar=("U", "PNG"), help="also a filter page")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=860)
    args = p.parse_args()
    print(screenshot(args.report / "index.html", args.png, width=args.width, height=args.height, wait_ms=3000))
    if args.filter:
        u, png = args.filter
        print(screenshot(args.report / "filters" / f"{u}.html", png, width=args.width, height=1100, wait_ms=3000))


if __name__ == "__main__":
    main()
