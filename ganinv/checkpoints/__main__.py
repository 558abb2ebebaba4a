"""``python -m ganinv.checkpoints convert IN OUT`` | ``info PATH``."""
import argparse
import sys

from .stylegan import convert, describe


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ganinv.checkpoints", description=(
        "Inspect or convert StyleGAN2 checkpoints; nothing in a file is ever executed."))
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="NVIDIA .pkl (or rosinality .pt) -> rosinality-layout .pt")
    conv.add_argument("src")
    conv.add_argument("dst")
    info = sub.add_parser("info", help="print the inferred architecture")
    info.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            print(f"wrote {convert(args.src, args.dst)}")
        else:
            print(describe(args.path))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
