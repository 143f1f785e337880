"""``python -m catdog.report FOLDER [DATA_DIR]``: the report command (:mod:`catdog.cli.report`)."""

from catdog.cli.report import run

if __name__ == "__main__":
    run()
