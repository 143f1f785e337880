"""MkDocs hooks: the configuration reference (configuration.md) is generated from conf/ at every build, never stored."""

from pathlib import Path

from mkdocs.structure.files import File

from catdog.config_reference import reference_markdown


def _conf_dir(config) -> Path:
    return Path(config["config_file_path"]).parent / "conf"


def on_files(files, config):
    files.append(File.generated(config, "configuration.md", content=reference_markdown(_conf_dir(config))))
    return files


def on_serve(server, config, builder):
    server.watch(str(_conf_dir(config)))
    return server
