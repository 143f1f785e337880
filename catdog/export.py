"""``python -m catdog.export ...``: the same command as ``python export.py ...`` (:mod:`catdog.cli.export`)."""

from catdog.cli.export import main

if __name__ == "__main__":
    main()
