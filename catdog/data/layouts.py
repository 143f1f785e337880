"""Find labelled and unlabelled images on disk, whatever layout the user has.

Labelled layouts, detected from what is on disk under the dataset root:

* ``folders``: ``train/<class>/*`` and ``validation/<class>/*`` (the original Keras layout).
* ``flat``: Kaggle's ``train/cat.1.jpg``, ``train/dog.1.jpg``; the class is the file-name prefix before the first dot.
* ``class_folders``: ``train/<class>/*`` alone; the validation split is made after loading.

A flat ``train/`` may also come with a ``validation/`` folder of either kind.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from catdog.data.images import list_image_files
from catdog.errors import DatasetError

VALIDATION_DIR_NAMES = ("validation", "val", "valid")


@dataclass(frozen=True)
class LabelledImages:
    """Image paths with integer labels indexing ``classes`` (sorted class names)."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    layout: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> LabelledImages:
        return LabelledImages(
            [self.paths[i] for i in indices], [self.labels[i] for i in indices], self.classes, self.layout
        )


@dataclass(frozen=True)
class DatasetLayout:
    """What was found under a dataset root: the labelled training images and, if present, a separate validation set."""

    train: LabelledImages
    validation: LabelledImages | None
    layout: str


def _as_path(folder: str | bytes | os.PathLike) -> Path:
    """``folder`` as a ``Path``; bytes names that are not valid UTF-8 keep their bytes as surrogate escapes."""
    return Path(os.fsdecode(os.fspath(folder)))


def _visible_subdirs(folder: Path) -> list[Path]:
    """Subfolders, without hidden ones and tool folders such as ``__MACOSX`` (names starting with ``.`` or ``_``)."""
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if not e.name.startswith((".", "_")) and _is_dir(e))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _require_dir(folder: Path, what: str) -> None:
    if not folder.exists():
        raise DatasetError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise DatasetError(f"{what} is not a folder: {folder}")


def read_class_folders(folder: str | os.PathLike, classes: list[str] | None = None) -> LabelledImages:
    """``folder/<class>/*`` -> labelled images; classes are the sorted subfolder names unless given."""
    folder = _as_path(folder)
    _require_dir(folder, "labelled")
    subdirs = _visible_subdirs(folder)
    found = [d.name for d in subdirs]
    if classes is None:
        classes = found
    folder_of = {classes[label]: name for name, label in match_classes(found, classes, folder, "class folders").items()}
    missing = [c for c in classes if c not in folder_of]
    if missing:
        raise DatasetError(f"{folder} has class folders {found}, but the training classes are {classes}")
    _check_class_count(classes, folder)
    paths, labels = [], []
    for label, name in enumerate(folder_of[c] for c in classes):
        files = list_image_files(folder / name)
        if not files:
            raise DatasetError(f"class folder {folder / name} holds no images (expected {', '.join(_EXT_HINT)})")
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    return LabelledImages(paths, labels, list(classes), "class_folders")


_EXT_HINT = (".jpg", ".png", "...")
_FLAT_NAME = re.compile(r"^([^.]+)\..+\.[A-Za-z0-9]+$")


def read_flat_folder(folder: str | os.PathLike, classes: list[str] | None = None) -> LabelledImages:
    """Kaggle's flat layout: ``folder/<class>.<id>.<ext>``; class = prefix before the first dot."""
    folder = _as_path(folder)
    files = list_image_files(folder)
    if not files:
        raise DatasetError(f"no images in {folder}")
    names = []
    unlabelled = []
    for f in files:
        m = _FLAT_NAME.match(f.name)
        if m is None:
            unlabelled.append(f.name)
        names.append(m.group(1).lower() if m else None)
    if unlabelled:
        example = ", ".join(unlabelled[:3])
        raise DatasetError(
            f"unknown layout in {folder}: {len(unlabelled)} of {len(files)} files are not named <class>.<id>.<ext> "
            f"(e.g. {example}). Use Kaggle's flat names (cat.1.jpg) or one subfolder per class (train/cat/1.jpg)."
        )
    found = sorted(set(names))
    if classes is None:
        classes = found
    index = match_classes(found, classes, folder, "classes")
    _check_class_count(classes, folder)
    return LabelledImages([str(f) for f in files], [index[n] for n in names], list(classes), "flat")


def match_classes(found: list[str], classes: list[str], folder: Path, what: str) -> dict[str, int]:
    """Each found class name -> its index in ``classes``: by exact name, else case-insensitively where that is
    unambiguous (``Cat/`` for ``cat``). A name that matches no class (or several) is an error naming both lists."""
    exact = {c: i for i, c in enumerate(classes)}
    folded: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        folded.setdefault(c.casefold(), []).append(i)
    found_folded = [f.casefold() for f in found]
    index = {}
    for name in found:
        if name in exact:
            index[name] = exact[name]
        elif len(folded.get(name.casefold(), [])) == 1 and found_folded.count(name.casefold()) == 1:
            index[name] = folded[name.casefold()][0]
        else:
            raise DatasetError(f"{folder} has {what} {found}, but the training classes are {classes}")
    return index


def _check_class_count(classes: list[str], folder: Path) -> None:
    if len(classes) < 2:
        found = f"only one class ({classes[0]!r})" if classes else "no classes"
        raise DatasetError(f"{folder} has {found}: a classifier needs at least two")


def read_labelled(folder: str | os.PathLike, classes: list[str] | None = None) -> LabelledImages:
    """Read a labelled folder in either the class-folder or the flat layout."""
    folder = _as_path(folder)
    _require_dir(folder, "labelled")
    subdirs = _visible_subdirs(folder)
    has_images = bool(list_image_files(folder))
    if subdirs and has_images:
        raise DatasetError(
            f"unknown layout in {folder}: it holds both images and subfolders "
            f"({', '.join(d.name for d in subdirs[:3])}); "
            "use either one subfolder per class or Kaggle's flat <class>.<id>.jpg names"
        )
    if subdirs:
        return read_class_folders(folder, classes)
    if has_images:
        return read_flat_folder(folder, classes)
    raise DatasetError(f"no images in {folder} (neither class subfolders nor <class>.<id>.jpg files)")


def find_validation_dir(root: str | os.PathLike) -> Path | None:
    for name in VALIDATION_DIR_NAMES:
        candidate = Path(root) / name
        if candidate.is_dir():
            return candidate
    return None


def detect_layout(root: str | os.PathLike) -> DatasetLayout:
    """Read ``root/train`` (and ``root/validation`` if present) in whichever layout they use."""
    root = _as_path(root)
    _require_dir(root, "dataset root (data.dir)")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(
            f"no train/ folder in {root}: data.dir must hold train/ (train/<class>/*.jpg or train/cat.1.jpg ...), "
            "optionally validation/ and test/"
        )
    train = read_labelled(train_dir)
    val_dir = find_validation_dir(root)
    if val_dir is None:
        name = "flat" if train.layout == "flat" else "class_folders"
        return DatasetLayout(train, None, name)
    validation = read_labelled(val_dir, classes=train.classes)
    return DatasetLayout(train, validation, "folders")


def find_unlabelled(folder: str | os.PathLike) -> list[Path]:
    """Images for prediction: directly in ``folder``, or in its single subfolder (Keras' ``test/test/``)."""
    folder = _as_path(folder)
    if folder.is_file():
        return [folder]
    _require_dir(folder, "prediction input")
    files = list_image_files(folder)
    if not files:
        subdirs = _visible_subdirs(folder)
        if len(subdirs) == 1:
            files = list_image_files(subdirs[0])
        elif len(subdirs) > 1:
            raise DatasetError(
                f"unknown layout in {folder}: no images directly inside and {len(subdirs)} subfolders; "
                "put the images in the folder itself or in one subfolder"
            )
    if not files:
        raise DatasetError(f"no images in {folder}")
    return files


def row_ids(paths: list, root: str | os.PathLike) -> list[str]:
    """Ids for scored (labelled) images, which need not be submission ids: file stems when those are unique, else
    paths relative to ``root`` (class folders numbered per class, as in Microsoft's ``Cat/0.jpg``, ``Dog/0.jpg``)."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [Path(os.path.relpath(p, root)).as_posix() for p in paths]


def image_ids(paths: list[Path]) -> list[str]:
    """Id of each image = file stem; duplicate stems are an error naming both files."""
    seen: dict[str, Path] = {}
    for p in paths:
        stem = Path(p).stem
        if stem in seen:
            raise DatasetError(f"two images share the id {stem!r}: {seen[stem]} and {p}")
        seen[stem] = Path(p)
    return list(seen)
