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
    except (ValueError, OSError) as e:  # one line naming the file, exit 2, as train.py / invert.py
        text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        print(f"python -m ganinv.checkpoints: {text}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
