"""Grading schemes: the questions a grader answers about an image and the lesions they mark.

A scheme has questions (DR grade, maculopathy, image quality ...), each single- or
multi-choice with options that carry a label, a hotkey and whether the answer means
disease; and lesion types (microaneurysm, haemorrhage, fluid ...) that marks are drawn
with. A question may map the model's labels onto its options so the AI's answer is shown
in the grader's terms (:func:`ai_answer`).

Every key on the review page is one key press meaning one thing, so hotkeys are unique
across the whole scheme (answers and lesion types) and may not take a key the review page
already uses (:data:`RESERVED_KEYS`, the one list of them). The digits 1-9 are not
reserved: they are answer keys, and the "model" preset gives them to the model's labels
exactly as the review page always has.

GUI-free and SQL-free: the store keeps schemes as JSON (:meth:`Scheme.to_json`) and the
desktop and CLI both read them through this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .findings import guess_negative_labels, negative_labels

if TYPE_CHECKING:
    from .modelfile import ModelSpec

QUESTION_KINDS = ("single", "multi")
LESION_MODALITIES = ("fundus", "oct", "any")

# Keys the review page, the worklist and the window already use (what they do), in the
# spelling of :func:`normalise_key`. Scheme hotkeys may not take them. Keys with Ctrl, Alt
# or Meta are refused altogether (the window's commands live there).
RESERVED_KEYS: dict[str, str] = {
    "Enter": "confirm the AI answer",
    "Return": "confirm the AI answer",
    "U": "ungradable",
    "N": "write a note",
    "Z": "undo",
    "J": "next image",
    "K": "previous image",
    "Right": "next image",
    "Left": "previous image",
    "Up": "move in the list",
    "Down": "move in the list",
    "Shift+J": "next image not reviewed yet",
    "Shift+Right": "next image not reviewed yet",
    "PgDown": "next slice",
    "PgUp": "previous slice",
    "M": "go to the most suspicious slice",
    "G": "Grad-CAM overlay",
    "I": "Integrated Gradients overlay",
    "O": "no overlay",
    "S": "overlay side by side",
    "F": "fit the image",
    "0": "fit the image",
    "=": "actual size",
    "+": "zoom in",
    "-": "zoom out",
    "Space": "show the image without the overlay",
    "Delete": "delete the selected mark",
    "Backspace": "delete the selected mark",
    "Esc": "cancel the mark being drawn",
    "Tab": "move between controls",
    "?": "keyboard shortcut sheet",
    "F1": "keyboard shortcut sheet",
    "F5": "screen the images",
    "L": "brighter view",
    "Shift+L": "darker view",
    "W": "more contrast",
    "Shift+W": "less contrast",
    "Y": "gamma up",
    "Shift+Y": "gamma down",
    "Shift+R": "red-free view",
    "Shift+E": "CLAHE view",
    "X": "original view",
    "Shift+M": "marking mode",
    "Shift+H": "show or hide the marks",
}

_NAMED_KEYS = {
    "enter": "Enter",
    "return": "Return",
    "space": "Space",
    "delete": "Delete",
    "del": "Delete",
    "backspace": "Backspace",
    "esc": "Esc",
    "escape": "Esc",
    "tab": "Tab",
    "left": "Left",
    "right": "Right",
    "up": "Up",
    "down": "Down",
    "pgup": "PgUp",
    "pageup": "PgUp",
    "pgdown": "PgDown",
    "pagedown": "PgDown",
    **{f"f{i}": f"F{i}" for i in range(1, 13)},
}
_MODIFIERS = {"shift": "Shift", "ctrl": "Ctrl", "control": "Ctrl", "alt": "Alt", "meta": "Meta"}
_KEY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


class SchemeError(ValueError):
    """A scheme (or an answer to it) is not valid; the message says what and where."""


def normalise_key(key: str) -> str:
    """One spelling of a key: ``"shift+a"`` → ``"Shift+A"``, ``"pagedown"`` → ``"PgDown"``."""
    parts = [p.strip() for p in str(key).split("+")]
    if len(parts) > 1 and parts[-1] == "" and parts[-2] == "":  # "Shift++"
        parts = [*parts[:-2], "+"]
    *mods, last = parts
    names = []
    for mod in mods:
        if mod.lower() not in _MODIFIERS:
            raise SchemeError(f"hotkey {key!r}: {mod!r} is not a modifier (Shift)")
        names.append(_MODIFIERS[mod.lower()])
    if not last:
        raise SchemeError(f"hotkey {key!r} names no key")
    if len(last) == 1:
        last = last.upper()
    elif last.lower() in _NAMED_KEYS:
        last = _NAMED_KEYS[last.lower()]
    else:
        raise SchemeError(f"hotkey {key!r}: {last!r} is not a key EyeTriage knows")
    order = ["Ctrl", "Alt", "Meta", "Shift"]
    return "+".join([*sorted(set(names), key=order.index), last])


@dataclass(frozen=True)
class Option:
    """One answer of a question: the stored ``value``, what a grader reads, its key, and
    whether choosing it means disease (what "referable" / "finding" counts)."""

    value: str
    label: str
    hotkey: str | None = None
    disease: bool = False


@dataclass(frozen=True)
class Question:
    """One question of a scheme. ``model_map`` maps a model label to an option value."""

    key: str
    title: str
    kind: str = "single"
    options: list[Option] = field(default_factory=list)
    model_map: dict[str, str] = field(default_factory=dict)

    def option(self, value: str) -> Option | None:
        """The option with this value, or ``None``."""
        return next((o for o in self.options if o.value == value), None)

    @property
    def values(self) -> list[str]:
        return [o.value for o in self.options]


@dataclass(frozen=True)
class LesionType:
    """A kind of lesion a grader marks; ``colour`` is ``#rrggbb``; ``modality`` says on
    which images it is offered (fundus, oct or any)."""

    key: str
    label: str
    hotkey: str | None = None
    colour: str = "#ffffff"
    modality: str = "any"


@dataclass(frozen=True)
class Scheme:
    """A workspace's grading scheme: its questions and lesion types."""

    name: str
    questions: list[Question] = field(default_factory=list)
    lesion_types: list[LesionType] = field(default_factory=list)
    version: int = 1

    def question(self, key: str) -> Question | None:
        """The question with this key, or ``None``."""
        return next((q for q in self.questions if q.key == key), None)

    def lesion(self, key: str) -> LesionType | None:
        """The lesion type with this key, or ``None``."""
        return next((t for t in self.lesion_types if t.key == key), None)

    def lesions_for(self, modality: str | None) -> list[LesionType]:
        """The lesion types offered on an image of ``modality`` (all when unknown)."""
        if modality not in ("fundus", "oct"):
            return list(self.lesion_types)
        return [t for t in self.lesion_types if t.modality in (modality, "any")]

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """The scheme as plain JSON-able data (what the store keeps)."""
        return {
            "name": self.name,
            "version": self.version,
            "questions": [
                {
                    "key": q.key,
                    "title": q.title,
                    "kind": q.kind,
                    "options": [
                        {
                            "value": o.value,
                            "label": o.label,
                            "hotkey": o.hotkey,
                            "disease": o.disease,
                        }
                        for o in q.options
                    ],
                    "model_map": dict(q.model_map),
                }
                for q in self.questions
            ],
            "lesion_types": [
                {
                    "key": t.key,
                    "label": t.label,
                    "hotkey": t.hotkey,
                    "colour": t.colour,
                    "modality": t.modality,
                }
                for t in self.lesion_types
            ],
        }

    def to_json(self) -> str:
        """The scheme as JSON text."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Scheme:
        """A scheme from plain data; :class:`SchemeError` says which field is wrong.

        The result is not yet validated: call :meth:`validate`.
        """
        if not isinstance(data, Mapping):
            raise SchemeError(f"a scheme must be a JSON object, got {type(data).__name__}")
        try:
            questions = [
                Question(
                    key=str(q["key"]),
                    title=str(q.get("title") or q["key"]),
                    kind=str(q.get("kind", "single")),
                    options=[
                        Option(
                            value=str(o["value"]),
                            label=str(o.get("label") or o["value"]),
                            hotkey=None if o.get("hotkey") in (None, "") else str(o["hotkey"]),
                            disease=_bool(o.get("disease", False), f"option {o.get('value')!r}"),
                        )
                        for o in _list(q.get("options", []), f"question {q.get('key')!r} options")
                    ],
                    model_map={
                        str(k): str(v)
                        for k, v in _mapping(q.get("model_map") or {}, "model_map").items()
                    },
                )
                for q in _list(data.get("questions", []), "questions")
            ]
            lesions = [
                LesionType(
                    key=str(t["key"]),
                    label=str(t.get("label") or t["key"]),
                    hotkey=None if t.get("hotkey") in (None, "") else str(t["hotkey"]),
                    colour=str(t.get("colour", "#ffffff")),
                    modality=str(t.get("modality", "any")),
                )
                for t in _list(data.get("lesion_types", []), "lesion_types")
            ]
            version = data.get("version", 1)
            if isinstance(version, bool) or not isinstance(version, int):
                raise SchemeError(f"scheme version must be a whole number, got {version!r}")
            return cls(
                name=str(data.get("name") or "custom"),
                questions=questions,
                lesion_types=lesions,
                version=version,
            )
        except KeyError as exc:
            raise SchemeError(f"a scheme entry is missing its {exc.args[0]!r} field") from None
        except (TypeError, AttributeError) as exc:
            raise SchemeError(f"a scheme entry has the wrong shape ({exc})") from None

    @classmethod
    def from_json(cls, text: str) -> Scheme:
        """A scheme from JSON text (not yet validated: call :meth:`validate`)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SchemeError(f"the scheme is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------ rules

    def validate(self) -> Scheme:
        """Check the scheme; raise :class:`SchemeError` with a sentence on the first fault.

        Keys are short lower-case names; a question has a kind, at least one option,
        unique option values, and a model map onto its own values; lesion types have a
        ``#rrggbb`` colour and a modality; hotkeys are unique across the whole scheme and
        never a key the review page already uses. Returns the scheme, so calls chain.
        """
        if not self.name.strip():
            raise SchemeError("a scheme needs a name")
        seen_questions: set[str] = set()
        keys: dict[str, str] = {}  # normalised hotkey -> what uses it
        for q in self.questions:
            where = f"question {q.key!r}"
            _check_key_name(q.key, "question")
            if q.key in seen_questions:
                raise SchemeError(f"two questions have the key {q.key!r}")
            seen_questions.add(q.key)
            if q.kind not in QUESTION_KINDS:
                raise SchemeError(f"{where}: kind must be 'single' or 'multi', got {q.kind!r}")
            if not q.options:
                raise SchemeError(f"{where} has no options to answer with")
            values: set[str] = set()
            for o in q.options:
                if not o.value.strip():
                    raise SchemeError(f"{where} has an option with an empty value")
                if o.value in values:
                    raise SchemeError(f"{where} has the option {o.value!r} twice")
                values.add(o.value)
                if o.hotkey is not None:
                    _claim(keys, o.hotkey, f"{where} option {o.value!r}")
            for label, value in q.model_map.items():
                if value not in values:
                    raise SchemeError(
                        f"{where}: the model label {label!r} maps to {value!r}, "
                        f"which is not one of its options ({', '.join(sorted(values))})"
                    )
        seen_lesions: set[str] = set()
        for t in self.lesion_types:
            where = f"lesion type {t.key!r}"
            _check_key_name(t.key, "lesion type")
            if t.key in seen_lesions:
                raise SchemeError(f"two lesion types have the key {t.key!r}")
            seen_lesions.add(t.key)
            if not _COLOUR.match(t.colour):
                raise SchemeError(f"{where}: colour must be #rrggbb, got {t.colour!r}")
            if t.modality not in LESION_MODALITIES:
                raise SchemeError(
                    f"{where}: modality must be fundus, oct or any, got {t.modality!r}"
                )
            if t.hotkey is not None:
                _claim(keys, t.hotkey, where)
        return self

    def hotkeys(self) -> dict[str, tuple[str, str]]:
        """Every hotkey (normalised) → ``("answer", "question:value")`` or
        ``("lesion", key)``: what the review page binds."""
        out: dict[str, tuple[str, str]] = {}
        for q in self.questions:
            for o in q.options:
                if o.hotkey:
                    out[normalise_key(o.hotkey)] = ("answer", f"{q.key}:{o.value}")
        for t in self.lesion_types:
            if t.hotkey:
                out[normalise_key(t.hotkey)] = ("lesion", t.key)
        return out


def _claim(keys: dict[str, str], hotkey: str, who: str) -> None:
    """Record ``hotkey`` for ``who``; refuse a reserved key or one already taken."""
    key = normalise_key(hotkey)
    if any(m in key.split("+")[:-1] for m in ("Ctrl", "Alt", "Meta")):
        raise SchemeError(
            f"{who}: hotkey {hotkey!r} uses Ctrl, Alt or Meta; answer and lesion keys are "
            "single keys, optionally with Shift"
        )
    if key in RESERVED_KEYS:
        raise SchemeError(
            f"{who}: hotkey {key!r} is already the review page's key to "
            f"{RESERVED_KEYS[key]}; choose another"
        )
    if key in keys:
        raise SchemeError(f"{who}: hotkey {key!r} is already used by {keys[key]}")
    keys[key] = who


def _check_key_name(key: str, what: str) -> None:
    if not _KEY_NAME.match(key):
        raise SchemeError(
            f"{what} key {key!r} must be a short lower-case name (letters, digits, _), "
            "starting with a letter"
        )


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise SchemeError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _mapping(value: Any, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise SchemeError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SchemeError(f"{what}: disease must be true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------- answers


def ai_answer(
    scheme: Scheme, question: Question | str, model_probs: Mapping[str, float]
) -> str | None:
    """The model's answer in the grader's terms: the option whose mapped model labels hold
    the most probability (``None`` when the question maps none of the model's labels).

    A DR model's ``Mild`` and ``Moderate`` both map into the grader's options, so the
    option with the largest summed probability is the AI's answer.
    """
    q = scheme.question(question) if isinstance(question, str) else question
    if q is None:
        return None
    totals: dict[str, float] = {}
    for label, p in model_probs.items():
        value = q.model_map.get(str(label))
        if value is None or q.option(value) is None:
            continue
        totals[value] = totals.get(value, 0.0) + float(p)
    if not totals:
        return None
    order = {v: i for i, v in enumerate(q.values)}
    return max(totals, key=lambda v: (totals[v], -order[v]))


def scheme_disease(scheme: Scheme, answers: Mapping[str, Sequence[str]]) -> bool | None:
    """Whether a grader's answers mean disease: ``True`` if any chosen option is a disease
    option, ``False`` if a question that can mean disease was answered without one, and
    ``None`` when no such question was answered (nothing said about disease)."""
    said = False
    for key, values in answers.items():
        q = scheme.question(key)
        if q is None or not any(o.disease for o in q.options):
            continue
        chosen = [q.option(v) for v in values]
        if any(o is not None and o.disease for o in chosen):
            return True
        if any(o is not None for o in chosen):
            said = True
    return False if said else None


def answer_words(scheme: Scheme, answers: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """``(question title, chosen option labels)`` in the scheme's order, for the report and
    any other place that shows a grader's answers in words; unanswered questions are left
    out and a value the scheme no longer has is shown as stored."""
    rows = []
    for q in scheme.questions:
        values = answers.get(q.key) or []
        if values:
            words = [(q.option(v).label if q.option(v) else v) for v in values]
            rows.append((q.title, "; ".join(words)))
    known = {q.key for q in scheme.questions}
    for key, values in answers.items():
        if key not in known and values:
            rows.append((key, "; ".join(values)))
    return rows


# --------------------------------------------------------------------------- presets

# Okabe-Ito colours (distinguishable with colour-vision deficiency) plus white.
LESION_TYPES: tuple[LesionType, ...] = (
    LesionType("microaneurysm", "Microaneurysm", "A", "#d55e00", "fundus"),
    LesionType("haemorrhage", "Haemorrhage", "H", "#cc79a7", "fundus"),
    LesionType("hard_exudate", "Hard exudate", "E", "#f0e442", "fundus"),
    LesionType("cotton_wool_spot", "Cotton-wool spot", "C", "#56b4e9", "fundus"),
    LesionType("neovascularisation", "Neovascularisation", "V", "#009e73", "fundus"),
    LesionType("drusen", "Drusen", "D", "#e69f00", "any"),
    LesionType("intraretinal_fluid", "Intraretinal fluid", "R", "#0072b2", "oct"),
    LesionType("subretinal_fluid", "Subretinal fluid", "B", "#00d0d0", "oct"),
    LesionType("ped", "Pigment epithelial detachment (PED)", "P", "#ffffff", "oct"),
)

PRESETS: dict[str, str] = {
    "icdr": "ICDR diabetic retinopathy grade (R0-R4), maculopathy (M0/M1) and image quality",
    "referable": "referable / non-referable",
    "dme": "diabetic macular oedema present / absent",
    "glaucoma": "glaucoma suspect yes / no",
    "model": "the model's own labels",
}

# What a model's label says in ICDR terms (names compared ignoring case, spaces, _ and -).
_ICDR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "R0": ("0", "r0", "no dr", "nodr", "no diabetic retinopathy", "no retinopathy", "none"),
    "R1": ("1", "r1", "mild", "mild npdr", "mild dr"),
    "R2": ("2", "r2", "moderate", "moderate npdr", "moderate dr"),
    "R3": ("3", "r3", "severe", "severe npdr", "severe dr"),
    "R4": ("4", "r4", "proliferative", "proliferate", "pdr", "proliferative dr"),
}
_DIGIT_GRADES = frozenset("01234")
_REFERABLE_GRADES = ("R2", "R3", "R4")  # ICDR: moderate NPDR or worse is referable
_YES = ("yes", "present", "positive", "1", "true", "suspect")
_NO = ("no", "absent", "negative", "0", "false")


def _plain(label: str) -> str:
    return " ".join(str(label).lower().replace("_", " ").replace("-", " ").split())


def _icdr_grade(label: str) -> str | None:
    plain = _plain(label)
    return next((g for g, names in _ICDR_SYNONYMS.items() if plain in names), None)


def _map_by(labels: Sequence[str], rule: Any) -> dict[str, str]:
    out = {}
    for label in labels:
        value = rule(label)
        if value is not None:
            out[str(label)] = value
    return out


def _yes_no_rule(
    labels: Sequence[str], negatives: Sequence[str], words: Sequence[str], yes: str, no: str
) -> dict[str, str]:
    """Map a model's labels onto a yes/no question: a label naming the condition (one of
    ``words``) or a plain yes is ``yes``; a "no finding" label, or a plain no, is ``no``."""

    def rule(label: str) -> str | None:
        plain = _plain(label)
        if plain in _NO or label in negatives:
            return no
        if plain in _YES or any(w in plain for w in words):
            return yes
        return None

    return _map_by(labels, rule)


def preset(
    name: str, model_labels: Sequence[str] | None = None, *, spec: ModelSpec | None = None
) -> Scheme:
    """A built-in scheme (see :data:`PRESETS`), its questions mapped from ``model_labels``
    (or ``spec``'s labels, whose named "no finding" labels then count) where the labels
    say something the question asks. Raises :class:`SchemeError` for an unknown name."""
    if name not in PRESETS:
        raise SchemeError(f"unknown scheme preset {name!r}; choose one of {', '.join(PRESETS)}")
    labels = [str(x) for x in (spec.labels if spec is not None else model_labels or [])]
    task = spec.task if spec is not None else ("binary" if len(labels) == 2 else "multiclass")
    negatives = negative_labels(spec) if spec is not None else guess_negative_labels(labels, task)
    lesions = list(LESION_TYPES)
    if name == "icdr":
        grades = [
            Option("R0", "R0 no diabetic retinopathy (non-referable)", "1"),
            Option("R1", "R1 mild NPDR (non-referable)", "2"),
            Option("R2", "R2 moderate NPDR (referable)", "3", True),
            Option("R3", "R3 severe NPDR (referable)", "4", True),
            Option("R4", "R4 proliferative DR (referable)", "5", True),
        ]
        dr_map = _map_by(labels, _icdr_grade)
        if sum(_plain(lab) in _DIGIT_GRADES for lab in labels) < 3:  # "0"/"1" of a yes/no model
            dr_map = {k: v for k, v in dr_map.items() if _plain(k) not in _DIGIT_GRADES}
        maculopathy = [
            Option("M0", "M0 no maculopathy (non-referable)", "6"),
            Option("M1", "M1 maculopathy (referable)", "7", True),
        ]
        m_map = _yes_no_rule(
            labels, [], ("dme", "macular", "maculopathy", "oedema", "edema"), "M1", "M0"
        )
        m_map = {k: v for k, v in m_map.items() if k not in dr_map}
        quality = [
            Option("gradable", "Gradable", "8"),
            Option("ungradable", "Ungradable (image quality too poor to grade)", "9"),
        ]
        q_map = {
            lab: "ungradable" for lab in labels if _plain(lab) in ("ungradable", "poor quality")
        }
        return Scheme(
            "icdr",
            [
                Question(
                    "dr",
                    "Diabetic retinopathy (ICDR; R2 or worse is referable)",
                    "single",
                    grades,
                    dr_map,
                ),
                Question(
                    "maculopathy", "Maculopathy (M1 is referable)", "single", maculopathy, m_map
                ),
                Question("quality", "Image quality", "single", quality, q_map),
            ],
            lesions,
        ).validate()
    if name == "referable":

        def referable(label: str) -> str | None:
            grade = _icdr_grade(label)
            if grade is not None:
                return "referable" if grade in _REFERABLE_GRADES else "non_referable"
            plain = _plain(label)
            if plain in ("referable", "refer", "rdr"):
                return "referable"
            if label in negatives or plain in ("non referable", "not referable"):
                return "non_referable"
            return "referable"  # any other finding the model names is sent on

        options = [
            Option("non_referable", "Non-referable", "1"),
            Option("referable", "Referable (refer to an eye specialist)", "2", True),
        ]
        q = Question("referable", "Referable?", "single", options, _map_by(labels, referable))
        return Scheme("referable", [q], lesions).validate()
    if name == "dme":
        options = [
            Option("absent", "DME absent", "1"),
            Option("present", "DME present", "2", True),
        ]
        m = _yes_no_rule(
            labels, negatives, ("dme", "macular", "oedema", "edema"), "present", "absent"
        )
        return Scheme(
            "dme", [Question("dme", "Diabetic macular oedema", "single", options, m)], lesions
        ).validate()
    if name == "glaucoma":
        options = [
            Option("no", "Not a glaucoma suspect", "1"),
            Option("suspect", "Glaucoma suspect", "2", True),
        ]
        m = _yes_no_rule(labels, negatives, ("glaucoma",), "suspect", "no")
        return Scheme(
            "glaucoma", [Question("glaucoma", "Glaucoma suspect?", "single", options, m)], lesions
        ).validate()
    # "model": the model's own labels; disease per the findings rule
    if not labels:
        return Scheme("model", [], lesions).validate()
    neg = set(negatives)
    options = [
        Option(
            lab,
            spec.display(lab) if spec is not None else lab,
            str(i + 1) if i < 9 else None,
            lab not in neg,
        )
        for i, lab in enumerate(labels)
    ]
    kind = "multi" if task == "multilabel" else "single"
    q = Question("label", "Label", kind, options, {lab: lab for lab in labels})
    return Scheme("model", [q], lesions).validate()
