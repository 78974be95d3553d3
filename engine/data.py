"""Labelled image sets (a folder of class folders, or a CSV) and honest splits."""

from __future__ import annotations

import csv
import io
import os
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import Source, is_hidden
from .safefiles import UnreadableFile, read_text

VOLUME_LABELS = ("slice", "volume")


class DatasetError(Exception):
    """A labelled set that cannot be used, with the reason in words."""


@dataclass
class Sample:
    path: Source  # an image file, or one B-scan of a volume
    target: int | tuple[int, ...]  # class index, or a multi-hot tuple for multi-label
    group: str  # patient (or the file itself): never split across train/val/test
    volume: str | None = None  # the volume a B-scan labelled by its volume's label belongs to


MIN_PER_CLASS = 10  # fewer examples of a class than this earns a warning before training


@dataclass
class LabelledSet:
    root: Path
    labels: list[str]
    task: str
    samples: list[Sample]
    skipped_empty: int = 0  # rows without a label, left out
    missing: list[str] = field(default_factory=list)  # listed files that do not exist
    source: str = ""
    volume_labels: str = "slice"  # "volume": B-scans carry their volume's label
    empty_classes: list[str] = field(default_factory=list)  # class folders without images
    modality_values: dict[str, int] = field(default_factory=dict)  # a CSV modality column

    def __len__(self) -> int:
        return len(self.samples)

    def targets(self) -> np.ndarray:
        return np.asarray([s.target for s in self.samples])

    def small_classes(self, minimum: int = MIN_PER_CLASS) -> dict[str, int]:
        """Classes with fewer than ``minimum`` examples (too few to learn or to validate)."""
        return {lab: n for lab, n in self.class_counts().items() if n < minimum}

    def class_counts(self) -> dict[str, int]:
        if self.task == "multilabel":
            t = self.targets().reshape(len(self.samples), -1)
            return {lab: int(t[:, i].sum()) for i, lab in enumerate(self.labels)}
        c = Counter(int(s.target) for s in self.samples)
        return {lab: c.get(i, 0) for i, lab in enumerate(self.labels)}

    def subset(self, idx: list[int] | np.ndarray) -> LabelledSet:
        return LabelledSet(
            self.root,
            self.labels,
            self.task,
            [self.samples[i] for i in idx],
            source=self.source,
            volume_labels=self.volume_labels,
            modality_values=self.modality_values,
        )

    def volumes(self) -> list[str]:
        """The volumes whose B-scans carry the volume's label, in first-seen order."""
        return list(dict.fromkeys(s.volume for s in self.samples if s.volume is not None))

    def summary(self) -> dict:
        out_volumes = self.volumes()
        return {
            "source": self.source,
            "n": len(self.samples),
            **({"volumes": len(out_volumes), "volume_labels": "volume"} if out_volumes else {}),
            "counts": self.class_counts(),
            "skipped_unlabelled": self.skipped_empty,
            "missing_files": len(self.missing),
        }


def _infer_task(labels: list[str], task: str | None) -> str:
    if task:
        if task == "binary" and len(labels) != 2:
            raise DatasetError(f"a binary task needs exactly two labels, found {labels}")
        return task
    if len(labels) < 2:
        raise DatasetError(f"at least two labels are needed, found {labels or 'none'}")
    return "binary" if len(labels) == 2 else "multiclass"


def _order(found: set[str], label_order: list[str] | None) -> list[str]:
    if not label_order:
        return sorted(found, key=_natural_key)
    unknown = found - set(label_order)
    if unknown:
        raise DatasetError(
            f"labels {sorted(unknown)} are not in --label-order {','.join(label_order)}"
        )
    return list(label_order)


def _natural_key(s: str) -> tuple:
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s.lower())


def _group_for(item) -> str:  # noqa: ANN001 - engine.volumes.Item
    """The patient (from the DICOM header, volume.json or the name), else the file itself."""
    from .filefacts import item_facts

    patient = item_facts(item).get("patient")
    return f"patient:{patient}" if patient else f"file:{item.path.name}"


def _check_volume_labels(volume_labels: str) -> None:
    if volume_labels not in VOLUME_LABELS:
        raise DatasetError(f"--volume-labels must be slice or volume, not {volume_labels!r}")


def _volume_refused(item, where: str) -> DatasetError:  # noqa: ANN001
    return DatasetError(
        f"{where} is a volume of {item.n_slices} B-scans with one label for the whole volume; "
        "B-scan models learn from slice labels: label its slices (a CSV with a slice column) "
        "or pass --volume-labels volume to give every slice the volume's label"
    )


def _samples_for(item, target, volume_labels: str, where: str, group: str | None = None):  # noqa: ANN001, ANN202
    """Samples of one item: the image itself, or every B-scan of a volume (when asked)."""
    group = group or _group_for(item)
    if not item.is_volume:
        return [Sample(item.path, target, group)]
    if volume_labels != "volume":
        raise _volume_refused(item, where)
    if item.error:
        raise DatasetError(f"{where}: {item.error}")
    return [Sample(s, target, group, volume=str(item.path)) for s in item.slices]


def load_folder_dataset(
    root: str | Path,
    label_order: list[str] | None = None,
    task: str | None = None,
    volume_labels: str = "slice",
) -> LabelledSet:
    """One sub-folder per class; patients parsed from file names keep their images together.

    A volume in a class folder is used only with ``volume_labels="volume"``: its B-scans
    then all get the folder's label and stay together in one split.
    """
    from .volumes import discover_items

    _check_volume_labels(volume_labels)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not is_hidden(d.name))
    if not class_dirs:
        raise DatasetError(f"{root}: no class sub-folders (expected e.g. {root}/normal/*.jpg)")
    found = {d.name: discover_items(d) for d in class_dirs}
    empty = sorted(name for name, items in found.items() if not items)
    class_dirs = [d for d in class_dirs if found[d.name]]  # an empty folder is not a label
    if not class_dirs:
        raise DatasetError(f"{root}: the class folders hold no images")
    labels = _order({d.name for d in class_dirs}, label_order)
    task = _infer_task(labels, task)
    if task == "multilabel":
        raise DatasetError("multi-label data needs a CSV with one column per label")
    index = {lab: i for i, lab in enumerate(labels)}
    samples = [
        sample
        for d in class_dirs
        if d.name in index
        for item in found[d.name]
        for sample in _samples_for(
            item, index[d.name], volume_labels, f"{d.name}/{item.path.relative_to(d)}"
        )
    ]
    if not samples:
        raise DatasetError(f"{root}: the class folders hold no images")
    return LabelledSet(
        root,
        labels,
        task,
        samples,
        source=f"folder {root.name}",
        volume_labels=volume_labels,
        empty_classes=empty,
    )


def load_csv_dataset(
    root: str | Path,
    labels_csv: str | Path,
    image_col: str = "file",
    label_cols: list[str] | None = None,
    filters: list[str] | None = None,
    group_col: str | None = None,
    label_order: list[str] | None = None,
    task: str | None = None,
    slice_col: str | None = "slice",
    volume_labels: str = "slice",
    allow_outside: bool = False,
) -> LabelledSet:
    """Rows of a CSV; image paths are relative to ``root``. Several label columns = multi-label.

    A row may name a volume (multi-frame DICOM, multi-page TIFF, volume folder): with a
    1-based number in ``slice_col`` it labels that B-scan; without one it labels the whole
    volume, used only with ``volume_labels="volume"``. A path that leads outside ``root``
    (``../../etc/passwd``, an absolute path elsewhere) is refused unless ``allow_outside``:
    a label sheet should not make training read arbitrary files.
    """
    from .volumes import item_for_path

    _check_volume_labels(volume_labels)
    root, labels_csv = Path(root), Path(labels_csv)
    inside = os.path.realpath(root)
    label_cols = label_cols or ["label"]
    try:
        text = read_text(labels_csv)  # regular files only: a FIFO is refused, not opened
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except UnreadableFile as e:
        if e.reason == "file not found":
            raise DatasetError(f"{labels_csv}: no such CSV file") from None
        raise DatasetError(str(e)) from None
    except csv.Error as e:
        raise DatasetError(f"{labels_csv}: not a readable CSV ({e})") from None
    if not rows:
        raise DatasetError(f"{labels_csv}: no rows")
    columns = set(rows[0].keys())
    wanted = [image_col, *label_cols] + ([group_col] if group_col else [])
    conditions = [_parse_filter(f) for f in filters or []]
    wanted += [c for c, _ in conditions]
    absent = [c for c in wanted if c not in columns]
    if absent:
        raise DatasetError(
            f"{labels_csv.name}: no column {', '.join(absent)} (columns: {', '.join(sorted(columns))})"
        )
    rows = [r for r in rows if all((r[c] or "").strip() == v for c, v in conditions)]
    has_slices = bool(slice_col) and slice_col in columns
    multilabel = task == "multilabel" or len(label_cols) > 1
    skipped = 0
    kept: list[tuple[dict, list[str]]] = []
    for r in rows:
        values = [(r[c] or "").strip() for c in label_cols]
        if any(v == "" for v in values):
            skipped += 1
            continue
        kept.append((r, values))
    if multilabel:
        labels = list(label_cols)
        task = "multilabel"
    else:
        labels = _order({v[0] for _, v in kept}, label_order)
        task = _infer_task(labels, task)
    index = {lab: i for i, lab in enumerate(labels)}
    samples: list[Sample] = []
    missing: list[str] = []
    modality_col = next((c for c in columns if c and c.strip().lower() == "modality"), None)
    modality_values: Counter[str] = Counter()
    for r, values in kept:
        rel = r[image_col].strip()
        path = Path(os.path.realpath(root / rel))  # an absolute rel replaces root
        if not allow_outside and os.path.commonpath([inside, path]) != inside:
            raise DatasetError(
                f"{labels_csv.name}: {rel!r} leads outside the data folder {root}; refused "
                "(use --allow-outside-data to follow such paths)"
            )
        if not (path.is_file() or path.is_dir()):  # a volume may be a folder
            missing.append(rel)
            continue
        if multilabel:
            try:
                target: int | tuple[int, ...] = tuple(int(float(v) > 0) for v in values)
            except ValueError:
                raise DatasetError(
                    f"{labels_csv.name}: multi-label columns must hold 0/1, found {values} for {rel}"
                ) from None
        else:
            target = index[values[0]]
        item = item_for_path(path)
        if item is None:
            missing.append(rel)
            continue
        if modality_col:
            modality_values[(r[modality_col] or "").strip()] += 1
        group = f"{group_col}:{r[group_col]}" if group_col and r[group_col] else _group_for(item)
        number = (r.get(slice_col) or "").strip() if has_slices and slice_col else ""
        if number:
            samples.append(Sample(_slice_of(item, number, rel, labels_csv.name), target, group))
            continue
        samples.extend(_samples_for(item, target, volume_labels, rel, group))
    if not samples:
        raise DatasetError(f"{labels_csv.name}: no usable rows (after filters and empty labels)")
    return LabelledSet(
        root,
        labels,
        task,
        samples,
        skipped,
        missing,
        source=f"csv {labels_csv.name}",
        volume_labels=volume_labels,
        modality_values=dict(modality_values),
    )


def _slice_of(item, number: str, rel: str, csv_name: str) -> Source:  # noqa: ANN001
    """The B-scan a row's 1-based slice number names."""
    try:
        k = int(float(number))
    except ValueError:
        raise DatasetError(f"{csv_name}: slice {number!r} for {rel} is not a number") from None
    if not item.is_volume:
        if k == 1:
            return item.path
        raise DatasetError(f"{csv_name}: {rel} is a single image; it has no slice {k}")
    if not 1 <= k <= item.n_slices:
        raise DatasetError(
            f"{csv_name}: {rel} has {item.n_slices} slices; slice {k} does not exist"
        )
    return item.slices[k - 1]


def _parse_filter(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise DatasetError(f"filter {text!r} must look like column=value")
    col, value = text.split("=", 1)
    return col.strip(), value.strip()


def split_indices(
    ds: LabelledSet, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 42
) -> tuple[list[int], ...]:
    """Stratified, grouped split into ``len(fractions)`` parts, deterministic for a seed.

    Three fractions give the train/validation/test split; ``(0.2,) * 5`` gives five
    cross-validation folds. Groups (patients) are dealt out whole; within each class (the
    group's majority class), groups are shuffled with the seed and assigned so each part gets
    close to its share of images of that class.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise DatasetError("split fractions must add up to 1")
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(ds.samples):
        by_group[s.group].append(i)
    strata: dict[object, list[str]] = defaultdict(list)
    for g, idx in by_group.items():
        strata[_stratum(ds, idx)].append(g)
    rng = random.Random(seed)
    n_parts = len(fractions)
    splits: tuple[list[int], ...] = tuple([] for _ in range(n_parts))
    for key in sorted(strata, key=str):
        groups = sorted(strata[key])
        rng.shuffle(groups)
        total = sum(len(by_group[g]) for g in groups)
        filled = [0] * n_parts
        for g in groups:
            n = len(by_group[g])
            # the part furthest below its target share takes the next group
            deficits = [fractions[k] * total - filled[k] for k in range(n_parts)]
            k = int(np.argmax(deficits))
            filled[k] += n
            splits[k].extend(by_group[g])
    return tuple(sorted(s) for s in splits)


def _stratum(ds: LabelledSet, idx: list[int]) -> object:
    targets = [ds.samples[i].target for i in idx]
    return Counter(targets).most_common(1)[0][0]
