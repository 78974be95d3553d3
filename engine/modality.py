"""Which kind of image a set holds — colour fundus photographs or OCT B-scans — known, not assumed.

A model trained on OCT scans as if they were fundus photographs gets the field-of-view crop
in training and the fundus quality gate in screening, which calls every B-scan ungradable.
So the modality is taken from the data: a CSV ``modality`` column when there is one, else
the images themselves (a fundus photograph shows a circular field of view, a B-scan does
not; the detector finds one on 98–100 % of real fundus photographs and 0 % of real OCT
scans). A declared ``--modality`` that contradicts the CSV is refused; one that
contradicts the images is warned about. ``evaluate`` and ``screen`` use the same check to
warn when a model is given images of the other kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import DatasetError, LabelledSet

ALIASES = {
    "oct": "oct",
    "oct b-scan": "oct",
    "b-scan": "oct",
    "bscan": "oct",
    "fundus": "fundus",
    "cfp": "fundus",
    "colour fundus": "fundus",
    "color fundus": "fundus",
    "fundus photograph": "fundus",
}
SAMPLE = 24  # images looked at when the data does not say
FUNDUS_SHARE = 0.6  # at least this share with a field of view: fundus photographs
OCT_SHARE = 0.15  # at most this share with a field of view: OCT B-scans


@dataclass
class ModalityEvidence:
    """What the images show: how many of those looked at have a fundus field of view."""

    looked_at: int
    with_fov: int
    unreadable: int = 0

    @property
    def share(self) -> float:
        return self.with_fov / self.looked_at if self.looked_at else 0.0

    @property
    def modality(self) -> str | None:
        if not self.looked_at:
            return None
        if self.share >= FUNDUS_SHARE:
            return "fundus"
        if self.share <= OCT_SHARE:
            return "oct"
        return None

    def words(self) -> str:
        return f"{self.with_fov} of {self.looked_at} images looked at show a fundus field of view"


def normalise(value: str) -> str | None:
    return ALIASES.get(value.strip().lower())


def modality_from_column(ds: LabelledSet) -> str | None:
    """The modality named by the CSV's ``modality`` column for the rows kept, if any."""
    counts: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for v, n in (ds.modality_values or {}).items():
        m = normalise(v)
        if m:
            counts[m] += n
        elif v.strip():
            unknown[v] += n
    if not counts:
        return None
    if len(counts) > 1:
        parts = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        raise DatasetError(
            f"the rows mix image kinds ({parts} by the CSV's modality column): train one model "
            "per kind, e.g. --filter modality=oct"
        )
    return next(iter(counts))


def evidence_from_images(paths: Sequence[Path], sample: int = SAMPLE) -> ModalityEvidence:
    """Look for a fundus field of view on an evenly spread sample of ``paths`` (cheap decode)."""
    from .images import ImageError, _find_fov, open_image, to_rgb

    if not paths:
        return ModalityEvidence(0, 0)
    step = max(1, len(paths) // sample)
    picked = list(paths)[::step][:sample]
    seen = found = bad = 0
    for p in picked:
        try:
            im, _ = open_image(p, min_side=256)
        except ImageError:
            bad += 1
            continue
        seen += 1
        found += bool(_find_fov(to_rgb(im)).found)
    return ModalityEvidence(seen, found, bad)


def resolve_modality(declared: str | None, ds: LabelledSet, warn: list[str]) -> tuple[str, str]:
    """(modality, how it was known) for training on ``ds``; raises on a contradiction.

    ``declared`` is the user's ``--modality`` (None when not given). Warnings are appended
    to ``warn``.
    """
    column = modality_from_column(ds)
    if column:
        if declared and declared != column:
            raise DatasetError(
                f"--modality {declared} contradicts the CSV's modality column, which says "
                f"'{column}' for every row kept; drop --modality or filter the rows you mean"
            )
        return column, "the CSV's modality column"
    evidence = evidence_from_images([s.path for s in ds.samples])
    seen = evidence.modality
    if declared:
        if seen and seen != declared:
            warn.append(
                f"--modality {declared}, but the images look like {seen} "
                f"({evidence.words()}); check that this is the data you mean"
            )
        return declared, "--modality"
    if seen is None:
        raise DatasetError(
            f"cannot tell whether these are fundus photographs or OCT scans "
            f"({evidence.words()}); say which with --modality fundus or --modality oct"
        )
    return seen, f"the images ({evidence.words()})"


def mismatch_warning(model_modality: str, paths: Sequence[Path]) -> str | None:
    """A sentence when the images given to a model are clearly of the other kind."""
    evidence = evidence_from_images(paths, sample=12)
    seen = evidence.modality
    if seen is None or seen == model_modality:
        return None
    return (
        f"this is a {model_modality} model but the images look like {seen} "
        f"({evidence.words()}): its answers on them mean nothing"
    )
