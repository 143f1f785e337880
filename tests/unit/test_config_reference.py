"""catdog/config_reference.py: every key of conf/ with its default and comment, parsed line by line and checked
against OmegaConf."""

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from catdog.config_reference import (
    ConfigReferenceError,
    check_against_omegaconf,
    config_files,
    parse_config_text,
    reference_markdown,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def _leaves(node, prefix=()):
    """(path, value) of every leaf of a plain container: scalars, lists, empty mappings."""
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from _leaves(child, (*prefix, str(key)))
    else:
        yield prefix, node


def _as_loaded(value_as_written: str):
    """What OmegaConf reads for a value as written (null when nothing is written)."""
    return OmegaConf.to_container(OmegaConf.create(f"v: {value_as_written}"), resolve=False)["v"]


def _section(markdown: str, rel: str) -> str:
    """The part of the reference that documents conf/<rel>."""
    for part in markdown.split("\n### "):
        if f"`conf/{rel}`" in part:
            return part
    raise AssertionError(f"no section for conf/{rel}")


def test_every_conf_file_is_documented_entry_configs_first():
    files = config_files(CONF)
    assert sorted(f.rel for f in files) == sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml"))
    assert [f.rel for f in files[:4]] == ["train.yaml", "predict.yaml", "export.yaml", "serve.yaml"]


def test_every_leaf_key_of_every_conf_file_appears_with_its_default():
    markdown = reference_markdown(CONF)
    checked = 0
    for cfg in config_files(CONF):
        loaded = OmegaConf.to_container(OmegaConf.load(CONF / cfg.rel), resolve=False)
        entries = {e.path: e for e in cfg.entries if not e.mapping}
        section = _section(markdown, cfg.rel)
        for path, value in _leaves(loaded):
            if path == ("defaults",):
                assert [d.text for d in cfg.defaults] and len(cfg.defaults) == len(value)
                continue
            entry = entries[path]
            assert _as_loaded(entry.value) == value, (cfg.rel, path)
            dotted = ".".join((*cfg.package, *path))
            rows = [line for line in section.splitlines() if line.startswith(f"| `{dotted}` | ")]
            shown = f"`{entry.value}`".replace("|", "\\|") if entry.value else "`null`"
            assert len(rows) == 1 and shown in rows[0], (cfg.rel, dotted, rows)
            checked += 1
    assert checked > 300


@pytest.mark.parametrize(
    ("rel", "key", "selected_with"),
    [
        ("data/default.yaml", "data.augment.scale", "data=default"),
        ("trainer/gpu.yaml", "trainer.accelerator", "trainer=gpu"),
        ("model/optimizer/sgd.yaml", "model.optimizer.lr", "model/optimizer=sgd"),
        ("averaging/ema.yaml", "callbacks.averaging.decay", "averaging=ema"),
        ("experiment/demo.yaml", "data.dir", "experiment=demo"),
        ("hydra/launcher/slurm.yaml", "hydra.launcher.partition", "hydra/launcher=slurm"),
    ],
)
def test_group_files_show_keys_under_their_package_and_how_they_are_selected(rel, key, selected_with):
    section = _section(reference_markdown(CONF), rel)
    assert f"Selected with `{selected_with}`" in section
    assert f"| `{key}` | " in section


YAML = """\
# @package _group_
# A file about things,
# on two lines.
defaults:
  # the base settings
  - base
  - _self_  # then these

# Outer mapping.
outer:
  # Inner comment,
  # on two lines.
  inner: 1  # trailing
  flow: [1, 2]

  block:
    - a
    # about b
    - b
  nested:
    deep: ${seed}   # an interpolation
    weird: 'a # b'
plain: "x # not a comment"
empty:
'quoted key': 3
small: 1.0e-6
last: ???  # must be set
# a comment after the last key
"""


def test_comments_defaults_and_values_as_written_are_attached_to_their_keys(tmp_path):
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "opt.yaml").write_text(YAML)
    (tmp_path / "train.yaml").write_text("defaults:\n  - group: opt\n\nseed: 1\n")
    cfg = {c.rel: c for c in config_files(tmp_path)}["group/opt.yaml"]
    assert cfg.package == ("group",) and cfg.description == "A file about things, on two lines."
    assert [(d.text, d.comment) for d in cfg.defaults] == [("base", "the base settings"), ("_self_", "then these")]
    got = {cfg.dotted(e): (e.value, e.comment, e.mapping) for e in cfg.entries if e.path != ("defaults",)}
    assert got == {
        "group.outer": ("", "Outer mapping.", True),
        "group.outer.inner": ("1", "Inner comment, on two lines. trailing", False),
        "group.outer.flow": ("[1, 2]", "", False),
        "group.outer.block": ("[a, b]", "b: about b", False),
        "group.outer.nested": ("", "", True),
        "group.outer.nested.deep": ("${seed}", "an interpolation", False),
        "group.outer.nested.weird": ("'a # b'", "", False),
        "group.plain": ('"x # not a comment"', "", False),
        "group.empty": ("", "", False),
        "group.quoted key": ("3", "", False),
        "group.small": ("1.0e-6", "", False),
        "group.last": ("???", "must be set", False),
    }
    markdown = reference_markdown(tmp_path)
    section = _section(markdown, "group/opt.yaml")
    assert "Selected with `group=opt` (the default in `train.yaml`); keys under `group`." in section
    assert "| `group.outer.inner` | `1` | Inner comment, on two lines. trailing |" in section
    assert "| `group.outer.nested.deep` | `${seed}` | an interpolation |" in section
    assert "| `group.empty` | `null` |  |" in section
    assert "| `base` | the base settings |" in section
    assert "| `seed` | `1` |" in _section(markdown, "train.yaml")


@pytest.mark.parametrize(
    ("header", "package"),
    [
        ("", ("group", "sub")),
        ("# @package _global_\n", ()),
        ("# @package _global_.top\n", ("top",)),
        ("# @package _group_.more\n", ("group", "sub", "more")),
        ("# described first\n# @package elsewhere.deep\n", ("elsewhere", "deep")),
    ],
)
def test_package_headers(header, package):
    cfg = parse_config_text(header + "a: 1\n", "group/sub/x.yaml")
    assert cfg.package == package and cfg.dotted(cfg.entries[0]) == ".".join((*package, "a"))


@pytest.mark.parametrize(
    "text",
    [
        "a: [1,\n  2]\n",  # a flow list over two lines
        "a: |\n  text\n",  # a block scalar
        "? a\n: 1\n",  # a complex key
        "a:\n  - b: 1\n    c: 2\n",  # a list of mappings
        'a: "abc\n  def: x"\nb: 1\n',  # a quoted string over two lines: the parser sees a key OmegaConf does not
        "a: 1\n---\nb: 2\n",  # several documents
    ],
)
def test_a_line_the_parser_cannot_place_raises(text):
    with pytest.raises(ConfigReferenceError, match=r"conf/g/x\.yaml"):
        parse_config_text(text, "g/x.yaml")


def test_a_key_the_parser_missed_fails_the_cross_check_with_omegaconf():
    text = "a: 1\nb:\n  c: 2\n"
    cfg = parse_config_text(text, "g/x.yaml")
    cfg = dataclasses.replace(cfg, entries=[e for e in cfg.entries if e.path != ("b", "c")])
    with pytest.raises(ConfigReferenceError, match=r"did not find: b\.c"):
        check_against_omegaconf(cfg, text)
