"""``catdog-report FOLDER [DATA_DIR]`` (or ``python -m catdog.report``): (re)build the report of a run, k-fold or
sweep folder.

``DATA_DIR`` (default: the ``data.dir`` in the folder's ``.hydra/config.yaml``, relative to where you run this) is
where the thumbnails of the mistakes are read from.
"""

import sys

from catdog.cli.entry import quiet_console
from catdog.errors import CatdogError
from catdog.report.build import write_folder_report


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or len(argv) > 2:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    quiet_console()
    try:
        path = write_folder_report(argv[0], argv[1] if len(argv) > 1 else None)
    except (CatdogError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def run() -> None:
    """The console script: ``main`` on the command line's arguments."""
    sys.exit(main(sys.argv[1:]))
