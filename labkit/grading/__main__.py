"""python -m labkit.grading release SRC DST [--force] | upgrade-graded-cells NOTEBOOK..."""
from __future__ import annotations

import argparse
import sys

from labkit.grading.release import ReleaseError, release, upgrade_notebook


def main(argv: list[str] | None = None) -> int:
    """The instructor command line; a refused release prints one line and exits 2."""
    p = argparse.ArgumentParser(prog="python -m labkit.grading")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("release", help="write student copies (solutions and hidden tests removed)")
    r.add_argument("src_dir", help="folder of the solved notebooks")
    r.add_argument("dst_dir", help="folder for the student copies (must differ from src_dir)")
    r.add_argument("--force", action="store_true", help="overwrite earlier student copies in dst_dir")
    u = sub.add_parser("upgrade-graded-cells", help="rewrite hidden tests into the tamper-proof grade(...) form")
    u.add_argument("notebooks", nargs="+")
    args = p.parse_args(argv)
    try:
        if args.command == "release":
            for name, n in release(args.src_dir, args.dst_dir, force=args.force).items():
                print(f"{name}: {n} solution block(s) removed")
        else:
            for path in args.notebooks:
                print(f"{path}: {upgrade_notebook(path)} graded cell(s) upgraded")
    except (ReleaseError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"{p.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
