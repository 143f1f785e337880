"""Everything that faces the command line and Hydra: the four commands (``train``, ``predict``, ``export``,
``report``; :mod:`catdog.cli.train` ...), the behaviour they share (:mod:`catdog.cli.entry`), and the objects Hydra's
own config names: the resolvers of the folder names (:mod:`catdog.cli.resolvers`), the run-log handler
(:mod:`catdog.cli.run_log`) and the sweep callbacks (:mod:`catdog.cli.callbacks`)."""
