"""Grading schemes: presets, validation, JSON round trip and the AI's answer in a grader's terms."""

from __future__ import annotations

import json

import pytest

from engine.schemes import (
    PRESETS,
    RESERVED_KEYS,
    LesionType,
    Option,
    Question,
    Scheme,
    SchemeError,
    ai_answer,
    answer_words,
    normalise_key,
    preset,
    scheme_disease,
)

APTOS = ["No_DR", "Mild", "Moderate", "Severe", "Proliferate"]


def test_every_preset_is_valid_and_survives_a_json_round_trip():
    for name in PRESETS:
        scheme = preset(name, APTOS)
        again = Scheme.from_json(scheme.to_json()).validate()
        assert again == scheme
        assert scheme.lesion_types  # every preset offers lesion types


def test_icdr_preset_maps_a_dr_models_grades_and_calls_r2_and_worse_referable():
    scheme = preset("icdr", APTOS)
    dr = scheme.question("dr")
    assert dr.model_map == {
        "No_DR": "R0",
        "Mild": "R1",
        "Moderate": "R2",
        "Severe": "R3",
        "Proliferate": "R4",
    }
    assert [o.value for o in dr.options if o.disease] == ["R2", "R3", "R4"]
    assert "referable" in dr.option("R2").label and "non-referable" in dr.option("R1").label
    assert scheme.question("maculopathy").option("M1").disease
    assert {o.value for o in scheme.question("quality").options} == {"gradable", "ungradable"}
    # the AI's answer in ICDR terms
    probs = {"No_DR": 0.1, "Mild": 0.15, "Moderate": 0.6, "Severe": 0.1, "Proliferate": 0.05}
    assert ai_answer(scheme, "dr", probs) == "R2"
    assert ai_answer(scheme, dr, {"No_DR": 0.9, "Mild": 0.1}) == "R0"
    # a model that says nothing about maculopathy has no answer there
    assert ai_answer(scheme, "maculopathy", probs) is None


def test_icdr_digit_labels_map_only_for_a_graded_model_not_a_yes_no_one():
    assert preset("icdr", ["0", "1", "2", "3", "4"]).question("dr").model_map["3"] == "R3"
    yes_no = preset("icdr", ["0", "1"])
    assert yes_no.question("dr").model_map == {}


def test_referable_preset_follows_the_icdr_line_and_the_negative_labels_rule():
    scheme = preset("referable", APTOS)
    m = scheme.question("referable").model_map
    assert [m[x] for x in APTOS] == [
        "non_referable",
        "non_referable",
        "referable",
        "referable",
        "referable",
    ]
    m2 = preset("referable", ["normal", "glaucoma", "cataract"]).question("referable").model_map
    assert m2 == {"normal": "non_referable", "glaucoma": "referable", "cataract": "referable"}


def test_yes_no_presets_map_the_models_own_words():
    dme = preset("dme", ["normal", "dme"]).question("dme")
    assert dme.model_map == {"normal": "absent", "dme": "present"}
    glaucoma = preset("glaucoma", ["normal", "glaucoma", "cataract"]).question("glaucoma")
    assert glaucoma.model_map == {"normal": "no", "glaucoma": "suspect"}
    assert (
        ai_answer(
            preset("glaucoma", ["normal", "glaucoma"]), "glaucoma", {"glaucoma": 0.8, "normal": 0.2}
        )
        == "suspect"
    )


def test_model_preset_uses_the_findings_rule_for_disease_and_digits_for_keys():
    scheme = preset("model", ["normal", "dr", "glaucoma"])
    q = scheme.question("label")
    assert [(o.value, o.hotkey, o.disease) for o in q.options] == [
        ("normal", "1", False),
        ("dr", "2", True),
        ("glaucoma", "3", True),
    ]
    assert ai_answer(scheme, q, {"normal": 0.2, "dr": 0.5, "glaucoma": 0.3}) == "dr"
    # no model: no questions, but lesion types to mark
    empty = preset("model")
    assert empty.questions == [] and empty.lesion_types


def test_model_preset_honours_a_models_named_negative_labels():
    from engine.modelfile import ModelSpec

    labels = ["clear", "dr", "amd"]
    spec = ModelSpec(arch="tiny", task="multiclass", labels=labels, negative_labels=["clear"])
    q = preset("model", spec=spec).question("label")
    assert [o.disease for o in q.options] == [False, True, True]
    # without the model's naming, "clear" is not a "no finding" word
    plain = preset("model", labels).question("label")
    assert [o.disease for o in plain.options] == [True, True, True]


def test_scheme_disease_answers_true_false_or_nothing_said():
    scheme = preset("icdr", APTOS)
    assert scheme_disease(scheme, {"dr": ["R3"]}) is True
    assert scheme_disease(scheme, {"dr": ["R1"], "maculopathy": ["M1"]}) is True
    assert scheme_disease(scheme, {"dr": ["R1"], "maculopathy": ["M0"]}) is False
    assert scheme_disease(scheme, {"quality": ["ungradable"]}) is None
    assert scheme_disease(scheme, {}) is None


def _custom(**changes) -> Scheme:
    q = Question(
        "grade",
        "Grade",
        "single",
        [Option("a", "A", "1"), Option("b", "B", "2", True)],
        {"lbl": "a"},
    )
    parts = {
        "name": "custom",
        "questions": [q],
        "lesion_types": [LesionType("spot", "Spot", "Q", "#ff0000", "fundus")],
    }
    parts.update(changes)
    return Scheme(**parts)


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (_custom(questions=[Question("grade", "Grade", "single", [])]), "no options"),
        (
            _custom(
                questions=[
                    Question("grade", "G", "single", [Option("a", "A", "1"), Option("a", "A2")])
                ]
            ),
            "option 'a' twice",
        ),
        (
            _custom(
                questions=[
                    Question("grade", "G", "single", [Option("a", "A", "1"), Option("b", "B", "1")])
                ]
            ),
            "already used by question 'grade' option 'a'",
        ),
        (
            _custom(questions=[Question("grade", "G", "single", [Option("a", "A", "u")])]),
            "review page's key to ungradable",
        ),
        (
            _custom(lesion_types=[LesionType("spot", "Spot", "Z", "#ff0000")]),
            "review page's key to undo",
        ),
        (
            _custom(lesion_types=[LesionType("spot", "Spot", "1", "#ff0000")]),
            "already used by question 'grade'",
        ),
        (
            _custom(questions=[Question("grade", "G", "single", [Option("a", "A", "Ctrl+Q")])]),
            "Ctrl, Alt or Meta",
        ),
        (
            _custom(questions=[Question("grade", "G", "maybe", [Option("a", "A")])]),
            "kind must be",
        ),
        (
            _custom(
                questions=[Question("grade", "G", "single", [Option("a", "A")], {"x": "nope"})]
            ),
            "maps to 'nope'",
        ),
        (_custom(lesion_types=[LesionType("spot", "Spot", None, "red")]), "#rrggbb"),
        (_custom(lesion_types=[LesionType("Spot!", "Spot")]), "lower-case name"),
    ],
)
def test_validate_refuses_a_bad_scheme_with_a_sentence(scheme, message):
    with pytest.raises(SchemeError, match=message):
        scheme.validate()


def test_valid_custom_scheme_passes_and_reports_its_hotkeys():
    scheme = _custom().validate()
    assert scheme.hotkeys() == {
        "1": ("answer", "grade:a"),
        "2": ("answer", "grade:b"),
        "Q": ("lesion", "spot"),
    }


def test_reserved_keys_are_spelled_as_normalise_key_spells_them():
    for key in RESERVED_KEYS:
        assert normalise_key(key) == key
    assert normalise_key("shift+j") == "Shift+J"
    assert normalise_key("pagedown") == "PgDown"


def test_from_json_names_what_is_wrong():
    with pytest.raises(SchemeError, match="not valid JSON"):
        Scheme.from_json("{nope")
    with pytest.raises(SchemeError, match="missing its 'value'"):
        Scheme.from_json(json.dumps({"name": "x", "questions": [{"key": "q", "options": [{}]}]}))
    with pytest.raises(SchemeError, match="disease must be true or false"):
        Scheme.from_json(
            json.dumps(
                {
                    "name": "x",
                    "questions": [{"key": "q", "options": [{"value": "a", "disease": "yes"}]}],
                }
            )
        )


def test_lesion_types_follow_the_images_modality():
    scheme = preset("icdr")
    fundus = {t.key for t in scheme.lesions_for("fundus")}
    oct_ = {t.key for t in scheme.lesions_for("oct")}
    assert {"microaneurysm", "haemorrhage", "hard_exudate", "cotton_wool_spot"} <= fundus
    assert {"intraretinal_fluid", "subretinal_fluid", "ped"} <= oct_
    assert "drusen" in fundus and "drusen" in oct_
    assert "microaneurysm" not in oct_ and "ped" not in fundus


def test_answer_words_follow_the_scheme_order_and_keep_unknown_values():
    scheme = preset("icdr")
    words = answer_words(scheme, {"maculopathy": ["M1"], "dr": ["R2"], "old": ["x"]})
    assert words == [
        ("Diabetic retinopathy (ICDR; R2 or worse is referable)", "R2 moderate NPDR (referable)"),
        ("Maculopathy (M1 is referable)", "M1 maculopathy (referable)"),
        ("old", "x"),
    ]
