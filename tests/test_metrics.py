"""Metrics against values computed by hand."""

import pytest

from bertrt.tasks.metrics import (classification_report, entities, exact_match, ner_report, normalize_answer,
                                  squad_report, token_f1)


def test_classification_by_hand():
    # labels a, b, c; gold/pred pairs: (a,a) (a,b) (b,b) (b,b) (c,a) (c,c)
    r = classification_report([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2], ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a, b, c = (r["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == (0.5, 0.5, 0.5, 2)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0 and b["f1"] == pytest.approx(0.8)
    assert c["precision"] == 1.0 and c["recall"] == 0.5 and c["f1"] == pytest.approx(2 / 3)
    assert r["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r["macro"]["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    # single-label classification: micro P = R = F1 = accuracy
    assert r["micro"]["f1"] == pytest.approx(4 / 6) and r["micro"]["precision"] == pytest.approx(4 / 6)


def test_class_never_predicted_scores_zero_not_nan():
    r = classification_report([0, 1], [0, 0], ["x", "y"])
    assert r["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["x"]["precision"] == 0.5


def test_entities_bio_and_conlleval_quirks():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert entities(["I-PER", "I-PER"]) == {("PER", 0, 1)}  # I- after O starts an entity
    assert entities(["B-PER", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 1)}  # type change splits
    assert entities(["B-PER", "B-PER"]) == {("PER", 0, 0), ("PER", 1, 1)}
    assert entities(["O", "O"]) == set()


def test_entity_f1_partial_and_wrong_type_spans():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"], ["B-LOC", "O"]]
    pred = [["B-PER", "O", "O", "B-ORG", "O", "B-ORG"], ["B-LOC", "O"]]
    # gold: PER(0-1) LOC(3) ORG(5) | LOC(0); pred: PER(0) partial, ORG(3) wrong type, ORG(5) ok | LOC(0) ok
    r = ner_report(gold, pred)
    assert r["micro"]["precision"] == pytest.approx(2 / 4)
    assert r["micro"]["recall"] == pytest.approx(2 / 4)
    assert r["f1"] == pytest.approx(0.5)
    assert r["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_type"]["LOC"]["precision"] == 1.0 and r["per_type"]["LOC"]["recall"] == 0.5
    assert r["per_type"]["ORG"]["precision"] == 0.5 and r["per_type"]["ORG"]["recall"] == 1.0
    assert r["per_type"]["ORG"]["f1"] == pytest.approx(2 / 3)
    assert r["macro"]["f1"] == pytest.approx((0 + 2 / 3 + 2 / 3) / 3)
    assert r["token_accuracy"] == pytest.approx(6 / 8)


def test_squad_normalisation():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert exact_match("the Eiffel Tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_squad_f1_by_hand():
    # prediction "the big red dog" -> [big, red, dog]; gold "a red dog barked" -> [red, dog, barked]
    # common 2: P = 2/3, R = 2/3, F1 = 2/3
    assert token_f1("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    assert token_f1("dog dog", "dog") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts are clipped
    assert token_f1("the", "a") == 0.0  # both normalise to nothing: no common tokens
    r = squad_report({"q1": "Paris", "q2": "big red dog"},
                     {"q1": ["paris", "Paris, France"], "q2": ["red dog barked", "a cat"]})
    # q1: EM 1, F1 1; q2: EM 0, F1 max(2/3, 0)
    assert r["exact_match"] == pytest.approx(0.5)  # fractions, like every other metric
    assert r["f1"] == pytest.approx((1 + 2 / 3) / 2)
