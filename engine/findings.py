"""Which answers of a model mean "no finding": the one home of that rule.

Triage, sensitivity and every count of "disease found" depend on it, so it lives here
and nowhere else. A model file may name its negative ("no finding") labels in its
description (``negative_labels``, or the older single ``negative_label``); training sets
them from ``--negative-label`` or, when not given, from :func:`guess_negative_labels`.

The default rule, used when a model names none: a label is negative when its name,
ignoring case, spaces, ``_`` and ``-``, is one of :data:`NEGATIVE_NAMES` or starts with
"no " (``no_dr``, ``No glaucoma``). A binary model with no such name treats its first
label as negative (the convention of its metrics). A single-label model with no negative
label at all can auto-clear nothing: every confident answer is a finding. A multi-label
model's answer with no label present is "no finding".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .modelfile import ModelSpec

NEGATIVE_NAMES = frozenset(
    {"normal", "none", "no finding", "healthy", "negative", "0", "non referable", "not referable"}
)


def _plain(label: str) -> str:
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


def is_negative_name(label: str) -> bool:
    """Whether the default rule reads ``label`` as "no finding"."""
    plain = _plain(label)
    return plain in NEGATIVE_NAMES or plain.startswith("no ")


def guess_negative_labels(labels: Sequence[str], task: str) -> list[str]:
    """The default rule: labels named like "no finding" (binary: else the first label)."""
    found = [lab for lab in labels if is_negative_name(lab)]
    if not found and task == "binary" and labels:
        found = [labels[0]]
    return found


def negative_labels(spec: ModelSpec) -> list[str]:
    """The model's "no finding" labels: those it names, else the default rule's."""
    named = list(spec.negative_labels or ([spec.negative_label] if spec.negative_label else []))
    return named or guess_negative_labels(spec.labels, spec.task)


def finding_labels(spec: ModelSpec) -> list[str]:
    """Every label that is a finding (what "disease found" counts)."""
    neg = set(negative_labels(spec))
    return [lab for lab in spec.labels if lab not in neg]


def findings_in(spec: ModelSpec, answer_labels: Iterable[str]) -> list[str]:
    """The findings among an answer's labels (a multi-label answer may hold several)."""
    neg = set(negative_labels(spec))
    return [lab for lab in answer_labels if lab and lab not in neg and lab in spec.labels]


def positive_label(spec: ModelSpec) -> str | None:
    """A binary model's finding class (what its sensitivity is about): the label that is not
    "no finding"; None for other tasks, or when both or neither label is a finding."""
    if spec.task != "binary":
        return None
    found = finding_labels(spec)
    return found[0] if len(found) == 1 else None


def negative_indices(spec: ModelSpec) -> list[int]:
    """Class indices of the "no finding" labels."""
    neg = set(negative_labels(spec))
    return [i for i, lab in enumerate(spec.labels) if lab in neg]


def disease_words(spec: ModelSpec, limit: int = 4) -> str:
    """The disease classes in words, for "sensitivity (disease found: ...)"."""
    names = [spec.display(lab) for lab in finding_labels(spec)]
    if len(names) > limit:
        names = [*names[:limit], f"{len(names) - limit} more"]
    return ", ".join(names) or "no finding classes"
