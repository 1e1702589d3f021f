"""`vla bench instructions`: retrieval records and their summary, with a stand-in similarity."""

from __future__ import annotations

import pytest

from benchmarks.instruction_retrieval import retrieval_records, retrieval_summary

ORIGINALS = {0: "pick up the soup", 1: "pick up the milk", 2: "pick up the butter"}
# Cosines of each rewrite (rows) against the originals 0, 1, 2 (columns).
TABLE = {
    "grab the soup": [0.9, 0.2, 0.1],
    "the tin of soup please": [0.3, 0.5, 0.2],  # nearest is task 1: not retrieved
    "milk into the basket": [0.1, 0.8, 0.75],
}


def similarity(texts_a, texts_b):
    assert texts_b == [ORIGINALS[t] for t in (0, 1, 2)]  # the originals, in task order
    return [TABLE[text] for text in texts_a]


def test_records_name_the_nearest_task_and_the_margin_to_the_best_other():
    rewrites = {0: (("grab the soup", "phrasing"), ("the tin of soup please", "synonym")),
                1: (("milk into the basket", "phrasing"),)}
    records = retrieval_records(ORIGINALS, rewrites, similarity)
    assert [(r["task_id"], r["nearest_task"], r["retrieved"]) for r in records] == [
        (0, 0, True), (0, 1, False), (1, 1, True)]
    assert [r["margin"] for r in records] == pytest.approx([0.7, -0.2, 0.05])
    summary = retrieval_summary(records)
    assert summary["phrasing"] == {"retrieved": 2, "n": 2, "median_margin": pytest.approx(0.375),
                                   "min_margin": pytest.approx(0.05)}
    assert summary["synonym"]["retrieved"] == 0 and summary["synonym"]["n"] == 1
    assert summary["all"] == {"retrieved": 2, "n": 3, "median_margin": pytest.approx(0.05),
                              "min_margin": pytest.approx(-0.2)}


def test_the_command_retrieves_plain_rewordings_with_the_packaged_encoder(tmp_path, capsys):
    import json

    from vla_cli import main as vla_main

    rewrites = {"suite": "libero_object", "instructions": {
        "0": [{"text": "grab the alphabet soup and put it in the basket", "kind": "phrasing"}],
        "4": [{"text": "put the ketchup bottle into the basket", "kind": "synonym"}]}}
    path = tmp_path / "rewrites.json"
    path.write_text(json.dumps(rewrites))
    out = tmp_path / "retrieval.json"
    assert vla_main(["bench", "instructions", "--instructions", str(path), "--tasks", "0,4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["task_id"], r["nearest_task"]) for r in result["records"]] == [(0, 0), (4, 4)]
    assert result["summary"]["all"]["retrieved"] == 2 and result["summary"]["all"]["min_margin"] > 0.05
    assert "retrieved" in capsys.readouterr().out
