"""The configuration reference: every key of every YAML file under conf/, its default and its comments, as Markdown.

OmegaConf drops comments, so each file is read line by line as text: a key's comment is the comment lines written
above it (since the previous key or list item) plus a trailing ``# ...`` on its own line; the comment block at the top
of a file (after a ``# @package`` header) describes the file. Values are shown as written (``${seed}``, ``1.0e-6``).
The parser knows the subset of YAML that conf/ uses (nested block mappings, flow values, block lists such as Hydra's
defaults list) and fails loudly on anything else: every file is also loaded with ``OmegaConf`` and every leaf key it
holds must have been found, so a config written in a new style stops the documentation build instead of vanishing
from the reference.

Keys are shown as they are written on the command line: a config group's file lands under its package
(``conf/data/default.yaml``'s ``augment.scale`` is ``data.augment.scale``; ``# @package _global_`` files such as the
experiments write from the root). The site's ``configuration.md`` is made from :func:`reference_markdown` at build
time (``docs/hooks.py``), so it cannot drift from conf/.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

# Entry configs and the command that reads each.
ENTRY_COMMANDS = {
    "train": "python train.py",
    "predict": "python predict.py",
    "export": "python export.py",
    "serve": "catdog-serve",
}

# a block mapping's key (plain or quoted), then its value and trailing comment, if any
_KEY = re.compile(r"""^(?P<indent> *)(?P<key>'[^']*'|"[^"]*"|[^\s#'"{\[\-][^:]*?):(?:\s+(?P<rest>.*))?$""")
_ITEM = re.compile(r"^(?P<indent> *)-(?:\s+(?P<rest>.*))?$")
_PACKAGE = re.compile(r"^#\s*@package\s+(?P<package>\S+)\s*$")


class ConfigReferenceError(ValueError):
    """A config file the reference cannot document: a line it cannot place, or a key OmegaConf sees and it did not."""


@dataclass(frozen=True)
class Entry:
    """One leaf key: its path inside the file, its value as written, its comment, its line (1-based)."""

    path: tuple[str, ...]
    value: str
    comment: str
    line: int
    # a key whose value is the nested block below it: shown for its comment, not a leaf
    mapping: bool = False


@dataclass(frozen=True)
class DefaultsItem:
    """One item of a Hydra defaults list, as written (``data: default``, ``override /model: vgg16_bn``, ``_self_``)."""

    text: str
    comment: str


@dataclass
class ConfigFile:
    """A parsed config file: where it lives under conf/, its package, description, defaults list and leaf keys."""

    rel: str
    package: tuple[str, ...]
    description: str
    defaults: list[DefaultsItem] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    @property
    def group(self) -> str | None:
        """The config group (``model/optimizer``), or None for an entry config at the top of conf/."""
        parts = self.rel.split("/")
        return "/".join(parts[:-1]) or None

    @property
    def option(self) -> str:
        return self.rel.split("/")[-1].removesuffix(".yaml")

    def dotted(self, entry: Entry) -> str:
        """The key as written on the command line: package, then the path inside the file."""
        return ".".join((*self.package, *entry.path))


def _split_comment(text: str) -> tuple[str, str]:
    """Split a line's content from a trailing ``# comment`` (a ``#`` at the start or after whitespace, outside
    quotes)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"" and (i == 0 or text[i - 1] in " :[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), ""


def _comment_text(line: str) -> str:
    return line.strip()[1:].strip()


def _unquote(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
        return key[1:-1]
    return key.strip()


def _package_of(rel: str, header: str | None) -> tuple[str, ...]:
    """Hydra's package of a config file: its group (``model/optimizer`` -> ``model.optimizer``) unless a
    ``# @package`` header says otherwise; entry configs sit at the root."""
    group = tuple(rel.split("/")[:-1])
    if header is None:
        return group
    head, _, rest = header.partition(".")
    tail = tuple(rest.split(".")) if rest else ()
    if head == "_global_":
        return tail
    if head == "_group_":
        return group + tail
    return tuple(header.split("."))


def parse_config_text(text: str, rel: str) -> ConfigFile:
    """Parse one config file's text (``rel``: its path under conf/, e.g. ``data/default.yaml``) and check the result
    against ``OmegaConf``'s reading of the same text. Raises :class:`ConfigReferenceError` on a line that is not a
    key, a list item, a comment or blank, and on a leaf key OmegaConf finds that the parser did not."""
    lines = text.splitlines()
    i = 0
    header = None
    description = []
    while i < len(lines) and lines[i].startswith("#"):  # the header: a package line and the file's description
        package = _PACKAGE.match(lines[i])
        if package:
            header = package.group("package")
        else:
            description.append(_comment_text(lines[i]))
        i += 1
    cfg = ConfigFile(rel=rel, package=_package_of(rel, header), description=" ".join(description))

    stack: list[tuple[int, str]] = []  # the mappings the next key may belong to: (indent, key)
    open_key: Entry | None = None  # a key written with no value: a mapping, a block list or null, by what follows
    open_indent = -1
    items: list[tuple[str, str]] | None = None  # the block list under open_key: (item as written, comment)
    item_indent = -1
    pending: list[str] = []  # comment lines since the last key or item

    def close_open() -> None:
        """open_key's content has ended: a block list becomes one leaf (and a defaults list), no content a null."""
        nonlocal open_key, items
        if open_key is not None:
            value, comment = "", open_key.comment
            if items is not None:
                value = "[" + ", ".join(text for text, _ in items) + "]"
                if open_key.path == ("defaults",):
                    cfg.defaults.extend(DefaultsItem(text, c) for text, c in items)
                else:  # an item's comment joins the list's, naming the item
                    comment = " ".join([comment, *(f"{text}: {c}" for text, c in items if c)]).strip()
            cfg.entries.append(Entry(open_key.path, value, comment, open_key.line))
        open_key, items = None, None

    for lineno in range(i + 1, len(lines) + 1):
        raw = lines[lineno - 1]
        stripped = raw.strip()
        if not stripped:
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ConfigReferenceError(f"conf/{rel}:{lineno}: tab in the indentation")
        if stripped.startswith("#"):
            pending.append(_comment_text(raw))
            continue
        if stripped in ("---", "..."):
            raise ConfigReferenceError(f"conf/{rel}:{lineno}: several YAML documents in one file")
        indent = len(raw) - len(raw.lstrip(" "))
        item = _ITEM.match(raw)
        if item:
            if open_key is None or indent < open_indent or (items is not None and indent != item_indent):
                raise ConfigReferenceError(f"conf/{rel}:{lineno}: cannot place list item {stripped!r}")
            if items is None:
                items, item_indent = [], indent
            body, trailing = _split_comment(item.group("rest") or "")
            if not body or body.endswith(":") or body in ("|", ">"):
                raise ConfigReferenceError(f"conf/{rel}:{lineno}: nested block content in a list is not supported")
            items.append((body, " ".join([*pending, trailing]).strip()))
            pending = []
            continue
        key = _KEY.match(raw)
        if not key:
            raise ConfigReferenceError(f"conf/{rel}:{lineno}: cannot place line {stripped!r}")
        if open_key is not None:
            if items is not None and indent > item_indent:
                raise ConfigReferenceError(f"conf/{rel}:{lineno}: nested block content in a list is not supported")
            if items is None and indent > open_indent:  # the first key of a nested mapping
                stack.append((open_indent, open_key.path[-1]))
                cfg.entries.append(Entry(open_key.path, "", open_key.comment, open_key.line, mapping=True))
                open_key = None
            else:
                close_open()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(k for _, k in stack), _unquote(key.group("key")))
        value, trailing = _split_comment(key.group("rest") or "")
        comment = " ".join([*pending, trailing]).strip()
        pending = []
        if value in ("|", ">", "|-", ">-", "|+", ">+") or value.startswith(("&", "*", "!")):
            raise ConfigReferenceError(f"conf/{rel}:{lineno}: block scalars, anchors and tags are not supported")
        if value:
            cfg.entries.append(Entry(path, value, comment, lineno))
        else:
            open_key, open_indent = Entry(path, "", comment, lineno), indent
    close_open()
    check_against_omegaconf(cfg, text)
    return cfg


def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Leaf paths of a plain container: scalars, lists and empty mappings."""
    if isinstance(node, dict) and node:
        return [leaf for key, child in node.items() for leaf in _leaves(child, (*prefix, str(key)))]
    return [prefix]


def check_against_omegaconf(cfg: ConfigFile, text: str) -> None:
    """Raise :class:`ConfigReferenceError` unless every leaf key OmegaConf reads in text is one of cfg's entries (or
    lies inside a flow mapping written as one value), every entry is a key OmegaConf reads, and the defaults lists
    have as many items."""
    loaded = OmegaConf.to_container(OmegaConf.create(text), resolve=False) if text.strip() else {}
    found = {e.path for e in cfg.entries if not e.mapping}
    flow_mappings = {e.path for e in cfg.entries if e.value.startswith("{")}
    missing = [
        ".".join(leaf)
        for leaf in _leaves(loaded)
        if leaf and leaf not in found and not any(leaf[:n] in flow_mappings for n in range(1, len(leaf)))
    ]
    if missing:
        raise ConfigReferenceError(f"conf/{cfg.rel}: keys the reference did not find: {', '.join(missing)}")
    for entry in cfg.entries:
        node: Any = loaded
        for key in entry.path:
            if not isinstance(node, dict) or key not in node:
                raise ConfigReferenceError(
                    f"conf/{cfg.rel}:{entry.line}: {'.'.join(entry.path)} is not a key OmegaConf reads there"
                )
            node = node[key]
    defaults = loaded.get("defaults") if isinstance(loaded, dict) else None
    if isinstance(defaults, list) and len(defaults) != len(cfg.defaults):
        raise ConfigReferenceError(f"conf/{cfg.rel}: defaults list of {len(defaults)} items, {len(cfg.defaults)} found")


def parse_config_file(path: Path, conf_dir: Path) -> ConfigFile:
    return parse_config_text(Path(path).read_text(encoding="utf-8"), Path(path).relative_to(conf_dir).as_posix())


def config_files(conf_dir: Path) -> list[ConfigFile]:
    """Every config file under conf_dir: the entry configs (train, predict, export, serve, then any other), then the
    config groups in alphabetical order."""
    conf_dir = Path(conf_dir)
    paths = sorted(conf_dir.rglob("*.yaml"))
    order = list(ENTRY_COMMANDS)

    def rank(p: Path) -> tuple:
        rel = p.relative_to(conf_dir)
        if len(rel.parts) == 1:
            return (0, order.index(p.stem) if p.stem in order else len(order), p.stem)
        return (1, rel.parts[:-1], p.stem)

    return [parse_config_file(p, conf_dir) for p in sorted(paths, key=rank)]


_MD_SPECIAL = re.compile(r"([\\*_\[\]|])")


def _text(comment: str) -> str:
    """A comment as Markdown text: code spans kept, everything else escaped (HTML, emphasis, links, table pipes)."""
    parts = comment.split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: no code spans
        parts = [comment]
    out = []
    for n, part in enumerate(parts):
        if n % 2:
            out.append(_code(part))
        else:
            out.append(_MD_SPECIAL.sub(r"\\\1", html.escape(part, quote=False)))
    return "".join(out)


def _code(value: str) -> str:
    value = value.replace("|", "\\|")
    fence = "``" if "`" in value else "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _selection(cfg: ConfigFile, chosen_by: dict[str, list[str]]) -> str:
    if cfg.group is None:
        command = ENTRY_COMMANDS.get(cfg.option, f"the {cfg.option} command")
        return f"Read by `{command}`."
    text = f"Selected with `{cfg.group}={cfg.option}`"
    where = chosen_by.get(f"{cfg.group}={cfg.option}")
    if where:
        text += " (the default in " + ", ".join(f"`{w}`" for w in where) + ")"
    prefix = ".".join(cfg.package)
    keys = f"keys under `{prefix}`" if prefix else "keys from the root (`# @package _global_`)"
    return f"{text}; {keys}."


def _defaults_choices(files: list[ConfigFile]) -> dict[str, list[str]]:
    """group=option -> the files whose defaults list picks it (``model: vgg16_bn`` in train.yaml, ``optimizer: sgd``
    in model/vgg16_bn.yaml)."""
    chosen: dict[str, list[str]] = {}
    for cfg in files:
        for item in cfg.defaults:
            group, sep, option = item.text.partition(":")
            group, option = group.strip(), option.strip()
            if not sep or group.startswith(("override ", "optional ")) or option in ("null", "~", ""):
                continue
            full = group.lstrip("/") if group.startswith("/") or cfg.group is None else f"{cfg.group}/{group}"
            chosen.setdefault(f"{full}={option}", []).append(cfg.rel)
    return chosen


def file_markdown(cfg: ConfigFile, chosen_by: dict[str, list[str]] | None = None) -> str:
    """One file's section: heading, how it is selected, its description, its defaults list and its keys."""
    title = cfg.rel if cfg.group is None else f"{cfg.group}={cfg.option}"
    out = [f"### `{title}`", "", f"`conf/{cfg.rel}`. {_selection(cfg, chosen_by or {})}", ""]
    if cfg.description:
        out += [_text(cfg.description), ""]
    if cfg.defaults:
        out += ["| defaults list | comment |", "|---|---|"]
        out += [f"| {_code(d.text)} | {_text(d.comment)} |" for d in cfg.defaults]
        out.append("")
    keys = [e for e in cfg.entries if e.path != ("defaults",) and (e.comment or not e.mapping)]
    if keys:
        out += ["| key | default | comment |", "|---|---|---|"]
        for e in sorted(keys, key=lambda e: e.line):
            value = "" if e.mapping else _code(e.value) if e.value else "`null`"
            out.append(f"| {_code(cfg.dotted(e))} | {value} | {_text(e.comment)} |")
        out.append("")
    return "\n".join(out)


INTRO = """\
# Configuration reference

Every key of every file under `conf/`, with its default as written and the comments written beside it, generated
from the YAML files themselves when the site is built (`catdog/config_reference.py`), so it always matches them.

- Keys are shown as they are written on the command line: `python train.py data.augment.scale=[0.2,1.0]`.
  A key of a config group's file sits under the group's package (`data.`, `model.optimizer.`, `callbacks.averaging.`);
  the experiments and `hparams_search` write from the root (`# @package _global_`).
- A config group's file is picked with `group=option` (`trainer=gpu`, `model/optimizer=adamw`, `logger=[csv,wandb]`);
  a list's items are replaced whole (`data.augment.scale=[0.2,1.0]`).
- `${...}` values are interpolations: `${seed}` is the top-level `seed`, `${ensemble.size}` the key of that name.
- A key that is not in the files is added with `+key=value` (`+trainer.profiler=simple`), a key removed with `~key`.
"""


def reference_markdown(conf_dir: Path) -> str:
    """The configuration reference of every config file under conf_dir, as one Markdown page."""
    files = config_files(conf_dir)
    chosen_by = _defaults_choices(files)
    out = [INTRO]
    section = None
    for cfg in files:
        heading = "Entry configs" if cfg.group is None else f"`{cfg.group}`"
        if heading != section:
            out.append(f"## {heading}\n")
            section = heading
        out.append(file_markdown(cfg, chosen_by))
    return "\n".join(out)
