"""``python -m ganinv.editing``: runs :func:`ganinv.edit_cli.main` (the command line lives at driver
level, above editing/, because it also uses metrics and the CLI's error reporting)."""
import sys

from ganinv.edit_cli import PROG, main, parser  # noqa: F401 -- main and parser are this entry point's

if __name__ == "__main__":
    sys.exit(main())
