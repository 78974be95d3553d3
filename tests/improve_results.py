"""Improvement results built by hand from per-image audit answers (for the verdict tests)."""

from __future__ import annotations

DR, NORMAL = 0, 1
LABELS = ["diabetic_retinopathy", "normal"]


def result(
    truth: list[int],
    before: list[int],
    after: list[int],
    ood: tuple[int, int, int] | None = None,
    **metrics: tuple[float, float],
) -> dict:
    """An improvement result as the engine returns it, from per-image answers."""

    def accuracy(pred: list[int]) -> float:
        return sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth)

    def bal(pred: list[int]) -> float:
        recalls = []
        for k in sorted(set(truth)):
            idx = [i for i, t in enumerate(truth) if t == k]
            recalls.append(sum(pred[i] == k for i in idx) / len(idx))
        return sum(recalls) / len(recalls)

    b = {"n": len(truth), "accuracy": accuracy(before), "balanced_accuracy": bal(before)}
    a = {"n": len(truth), "accuracy": accuracy(after), "balanced_accuracy": bal(after)}
    for key, (vb, va) in metrics.items():
        b[key], a[key] = vb, va
    out = {
        "before": b,
        "after": a,
        "n_audit": len(truth),
        "strategy": "head",
        "audit_answers": {
            "labels": LABELS,
            "negative": NORMAL,
            "truth": truth,
            "before": before,
            "after": after,
        },
        "model": "f" * 64,
        "changed": [],
        "seconds": 1.0,
    }
    if ood is not None:
        out["ood_check"] = {"n": ood[0], "before": ood[1], "after": ood[2]}
    return out


def fixes(n_dr: int, n_normal: int, fixed: int, broken: int = 0) -> dict:
    """``fixed`` DR images the old model missed are now found; ``broken`` normals now wrong."""
    truth = [DR] * n_dr + [NORMAL] * n_normal
    before = [DR] * (n_dr - fixed) + [NORMAL] * fixed + [NORMAL] * n_normal
    after = [DR] * n_dr + [DR] * broken + [NORMAL] * (n_normal - broken)
    return result(truth, before, after)
