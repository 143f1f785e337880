"""``python -m catdog.serve ...``: the same command as ``catdog-serve ...`` (:mod:`catdog.cli.serve`)."""

from catdog.cli.serve import main

if __name__ == "__main__":
    main()
