"""Fuzzed training (grouped) and inference (pairs) files: every bad input yields the documented located
InputError — never a traceback from deep inside a library — and no output is written."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigrerank.data.candidates import read_pair_candidates
from bigrerank.data.grouped import load_groups
from bigrerank.errors import InputError

VOCAB = 50
GOOD_GROUP = {"qry": {"qid": "q1", "query": [5, 6]}, "pos": [{"pid": "p1", "passage": [7, 8]}],
              "neg": [{"pid": "n1", "passage": [9]}, {"pid": "n2", "passage": [10, 11]}]}
GOOD_FLAG = {"query": [5, 6], "pos": [[7, 8]], "neg": [[9], [10, 11]]}  # FlagEmbedding's layout
GOOD_PAIR = {"qid": "q1", "pid": "p1", "qry": [5, 6], "psg": [7, 8]}
ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                       st.text(max_size=5), st.lists(st.integers(-5, 10**20), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(record: dict, path: list, value) -> dict:
    record = json.loads(json.dumps(record))
    node = record
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return record


GROUP_CASES = [(GOOD_GROUP, path) for path in (["qry"], ["qry", "qid"], ["qry", "query"], ["pos"], ["pos", 0],
                                                ["pos", 0, "pid"], ["pos", 0, "passage"], ["neg"], ["neg", 1, "passage"])]
GROUP_CASES += [(GOOD_FLAG, path) for path in (["query"], ["pos"], ["pos", 0], ["neg"], ["neg", 1])]
PAIR_PATHS = [["qid"], ["pid"], ["qry"], ["psg"]]


def _still_json(data: bytes) -> bool:
    try:
        json.loads(data.decode("utf-8"))
        return True
    except ValueError:
        return False


def _check(path, reader):
    try:
        reader()
    except InputError as e:
        assert str(path) in str(e)
        return "error"
    return "ok"


@FUZZ
@given(case=st.sampled_from(GROUP_CASES), value=ODD_VALUES)
def test_grouped_format_wrong_types(tmp_path_factory, case, value):
    good, where = case
    tmp = tmp_path_factory.mktemp("g")
    path = tmp / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(_mutate(good, where, value)) + "\n")
    _check(path, lambda: load_groups(path, VOCAB, 3, cache_dir=str(tmp / "cache")))


@FUZZ
@given(cut=st.integers(1, 200), junk=st.binary(min_size=1, max_size=8))
def test_grouped_format_truncations_and_bad_bytes(tmp_path_factory, cut, junk):
    tmp = tmp_path_factory.mktemp("g")
    line = json.dumps(GOOD_GROUP).encode()
    path = tmp / "train.jsonl"
    bad = line[:cut % len(line)] + junk
    path.write_bytes(line + b"\n" + bad + b"\n")
    outcome = _check(path, lambda: load_groups(path, VOCAB, 3, cache_dir=str(tmp / "cache")))
    assert outcome == "error" or _still_json(bad)


@FUZZ
@given(where=st.sampled_from(PAIR_PATHS), value=ODD_VALUES)
def test_pair_format_wrong_types(tmp_path_factory, where, value):
    path = tmp_path_factory.mktemp("p") / "pairs.jsonl"
    path.write_text(json.dumps(GOOD_PAIR) + "\n" + json.dumps(_mutate(GOOD_PAIR, where, value)) + "\n")
    _check(path, lambda: read_pair_candidates(path, VOCAB))


@FUZZ
@given(cut=st.integers(1, 80), junk=st.binary(min_size=1, max_size=8))
def test_pair_format_truncations_and_bad_bytes(tmp_path_factory, cut, junk):
    path = tmp_path_factory.mktemp("p") / "pairs.jsonl"
    line = json.dumps(GOOD_PAIR).encode()
    bad = line[:cut % len(line)] + junk
    path.write_bytes(line + b"\n" + bad + b"\n")
    assert _check(path, lambda: read_pair_candidates(path, VOCAB)) == "error" or _still_json(bad)


def test_huge_token_ids_are_located(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(_mutate(GOOD_GROUP, ["pos", 0, "passage"], [1, 10**40])) + "\n")
    try:
        load_groups(path, VOCAB, 3, cache_dir=str(tmp_path / "cache"))
    except InputError as e:
        assert "train.jsonl:1: field 'pos[0].passage'" in str(e) and "vocabulary [0, 50)" in str(e)
    else:
        raise AssertionError("a token id beyond the vocabulary was accepted")
