"""The patient-grouped, stratified split: train/validation/test parts and cross-validation folds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from engine.data import DatasetError, LabelledSet, Sample, split_indices


def _set(n_patients: int = 60, per_patient: int = 2) -> LabelledSet:
    """Patients with 1-3 photographs each; a third have the finding (class 1)."""
    samples = []
    for p in range(n_patients):
        target = 1 if p % 3 == 0 else 0
        for k in range(1 + (p % per_patient) + (p % 5 == 0)):
            samples.append(Sample(Path(f"p{p}_{k}.jpg"), target, f"patient{p}"))
    return LabelledSet(Path("."), ["normal", "finding"], "binary", samples)


@pytest.mark.parametrize("k", [3, 5])
def test_folds_answer_every_image_once_and_keep_each_patient_in_one(k):
    ds = _set()
    folds = split_indices(ds, (1.0 / k,) * k, seed=7)
    assert len(folds) == k
    every = sorted(i for f in folds for i in f)
    assert every == list(range(len(ds)))  # each image in exactly one fold
    fold_of_patient: dict[str, set[int]] = {}
    for f, idx in enumerate(folds):
        for i in idx:
            fold_of_patient.setdefault(ds.samples[i].group, set()).add(f)
    assert all(len(v) == 1 for v in fold_of_patient.values())
    # stratified: each fold holds close to its share of each class (within one patient's images)
    for cls in (0, 1):
        total = sum(1 for s in ds.samples if s.target == cls)
        for idx in folds:
            n = Counter(ds.samples[i].target for i in idx)[cls]
            assert abs(n - total / k) <= 3


def test_the_split_is_the_same_for_a_seed_and_another_for_another_seed():
    ds = _set()
    a = split_indices(ds, (0.7, 0.15, 0.15), seed=3)
    assert split_indices(ds, (0.7, 0.15, 0.15), seed=3) == a
    assert split_indices(ds, (0.7, 0.15, 0.15), seed=4) != a
    assert len(a) == 3 and 0.6 < len(a[0]) / len(ds) < 0.8


def test_fractions_that_do_not_add_up_are_refused():
    with pytest.raises(DatasetError, match="add up to 1"):
        split_indices(_set(), (0.5, 0.3), seed=1)
