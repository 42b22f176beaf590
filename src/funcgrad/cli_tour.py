"""``funcgrad tour``: train the seed models, check their gradients, draw them, write one page.

::

    funcgrad tour                      # writes ./funcgrad-tour/index.html (what `make demo` runs)
    funcgrad tour --out /tmp/tour      # elsewhere
    funcgrad tour --quick              # smaller and faster (what the tests run)
    funcgrad tour --only xor,moons     # some sections

prints each section's progress, then a summary table (section, metric, value, time) and the path
of the page; on a terminal the Fashion-MNIST training also draws fit's ``tqdm`` bar on stderr
(nothing when the output goes to a log). See :mod:`funcgrad.tour` for what each section does.
Exit status 0, or 1 when a gradient check failed (the page is written either way).
"""

from __future__ import annotations

import argparse

SECTION_NAMES = (  # funcgrad.tour.SECTIONS
    "linear", "xor", "moons", "mnist", "gradients", "graphs", "reverse",
)


def _sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {unknown or [text]}; choose from {','.join(SECTION_NAMES)}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``funcgrad tour``."""
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="funcgrad-tour",
        help="directory for index.html and images/ (default ./funcgrad-tour; replaced if it "
        "holds an earlier tour)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="less data, fewer epochs and checks (for tests)"
    )
    parser.add_argument(
        "--only",
        type=_sections,
        metavar="SECTIONS",
        default=None,
        help=f"comma-separated sections to run, from {','.join(SECTION_NAMES)} (default all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """Run the tour; 0 on success, 1 if a gradient check failed, 2 if --out is not usable."""
    from funcgrad import tour

    try:
        result = tour.run(args.out, quick=args.quick, seed=args.seed, sections=args.only,
                          print_fn=lambda line: print(line, flush=True))
    except FileExistsError as err:
        print(f"funcgrad tour: {err}", flush=True)
        return 2
    if result["failed_checks"]:
        print("gradient checks FAILED: " + "; ".join(result["failed_checks"]), flush=True)
        return 1
    return 0
