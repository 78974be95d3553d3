"""Labelled image sets (a folder of class folders, or a CSV) and honest splits."""

from __future__ import annotations

import csv
import io
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import discover_images, is_hidden
from .safefiles import UnreadableFile, read_text


class DatasetError(Exception):
    """A labelled set that cannot be used, with the reason in words."""


@dataclass
class Sample:
    path: Path
    target: int | tuple[int, ...]  # class index, or a multi-hot tuple for multi-label
    group: str  # patient (or the file itself): never split across train/val/test


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
            modality_values=self.modality_values,
        )

    def summary(self) -> dict:
        return {
            "source": self.source,
            "n": len(self.samples),
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


def _group_for(path: Path) -> str:
    from .naming import parse_patient_eye

    patient, _ = parse_patient_eye(path.name)
    return f"patient:{patient}" if patient else f"file:{path.name}"


def load_folder_dataset(
    root: str | Path, label_order: list[str] | None = None, task: str | None = None
) -> LabelledSet:
    """One sub-folder per class; patients parsed from file names keep their images together."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not is_hidden(d.name))
    if not class_dirs:
        raise DatasetError(f"{root}: no class sub-folders (expected e.g. {root}/normal/*.jpg)")
    found = {d.name: discover_images(d) for d in class_dirs}
    empty = sorted(name for name, paths in found.items() if not paths)
    class_dirs = [d for d in class_dirs if found[d.name]]  # an empty folder is not a label
    if not class_dirs:
        raise DatasetError(f"{root}: the class folders hold no images")
    labels = _order({d.name for d in class_dirs}, label_order)
    task = _infer_task(labels, task)
    if task == "multilabel":
        raise DatasetError("multi-label data needs a CSV with one column per label")
    index = {lab: i for i, lab in enumerate(labels)}
    samples = [
        Sample(p, index[d.name], _group_for(p))
        for d in class_dirs
        if d.name in index
        for p in found[d.name]
    ]
    if not samples:
        raise DatasetError(f"{root}: the class folders hold no images")
    return LabelledSet(
        root, labels, task, samples, source=f"folder {root.name}", empty_classes=empty
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
    allow_outside: bool = False,
) -> LabelledSet:
    """Rows of a CSV; image paths are relative to ``root``. Several label columns = multi-label.

    A path that leads outside ``root`` (``../../etc/passwd``, an absolute path elsewhere)
    is refused unless ``allow_outside``: a label sheet should not make training read
    arbitrary files.
    """
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
        if not path.is_file():
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
        group = f"{group_col}:{r[group_col]}" if group_col and r[group_col] else _group_for(path)
        samples.append(Sample(path, target, group))
        if modality_col:
            modality_values[(r[modality_col] or "").strip()] += 1
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
        modality_values=dict(modality_values),
    )


def _parse_filter(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise DatasetError(f"filter {text!r} must look like column=value")
    col, value = text.split("=", 1)
    return col.strip(), value.strip()


def split_indices(
    ds: LabelledSet, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 42
) -> tuple[list[int], list[int], list[int]]:
    """Stratified, grouped train/validation/test split, deterministic for a seed.

    Groups (patients) are dealt out whole; within each class (the group's majority class),
    groups are shuffled with the seed and assigned so each split gets close to its share of
    images of that class.
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
    splits: tuple[list[int], list[int], list[int]] = ([], [], [])
    for key in sorted(strata, key=str):
        groups = sorted(strata[key])
        rng.shuffle(groups)
        total = sum(len(by_group[g]) for g in groups)
        filled = [0, 0, 0]
        for g in groups:
            n = len(by_group[g])
            # the split furthest below its target share takes the next group
            deficits = [fractions[k] * total - filled[k] for k in range(3)]
            k = int(np.argmax(deficits))
            filled[k] += n
            splits[k].extend(by_group[g])
    return tuple(sorted(s) for s in splits)  # type: ignore[return-value]


def _stratum(ds: LabelledSet, idx: list[int]) -> object:
    targets = [ds.samples[i].target for i in idx]
    return Counter(targets).most_common(1)[0][0]
