"""Command line: pre-train one size (or extra seed, ``tiny-s-seed1``) of the offline model suite.

``python -m taskspace_utils.suite --size tiny-m [--suite-dir DIR] [--smoke] [--device D] [--threads N]``
prints the size's parameters, tokens seen, final validation loss and training wall time.
"""

from __future__ import annotations

import argparse

from .config import SUITE_MODELS
from .training import build_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pre-train one size of the offline model suite.")
    parser.add_argument("--size", required=True, choices=SUITE_MODELS)
    parser.add_argument("--suite-dir", default=None, help="suite folder (default: models.suite_root())")
    parser.add_argument("--smoke", action="store_true", help="toy config that builds in seconds")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    record = build_suite((args.size,), suite_dir=args.suite_dir, smoke=args.smoke, device=args.device,
                         num_threads=args.threads)[args.size]
    print(f"{args.size}: {record['params']:,} parameters, {record['tokens_seen']:,} tokens, "
          f"validation loss {record['validation_loss']:.3f}, {record['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
