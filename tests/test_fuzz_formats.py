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


# (good line, mutated path, what the value must be, the fields an error may name)
GROUP_CASES = [(GOOD_GROUP, ["qry"], None, ("qry", "qid")), (GOOD_GROUP, ["qry", "qid"], "id", ("qid",)),
               (GOOD_GROUP, ["qry", "query"], "ids", ("query",)), (GOOD_GROUP, ["pos"], None, ("pos",)),
               (GOOD_GROUP, ["pos", 0], None, ("pos[0]",)), (GOOD_GROUP, ["pos", 0, "pid"], "id", ("pos[0].pid",)),
               (GOOD_GROUP, ["pos", 0, "passage"], "ids", ("pos[0].passage",)), (GOOD_GROUP, ["neg"], None, ("neg",)),
               (GOOD_GROUP, ["neg", 1, "passage"], "ids", ("neg[1].passage",)),
               (GOOD_FLAG, ["query"], "ids", ("query",)), (GOOD_FLAG, ["pos"], None, ("pos",)),
               (GOOD_FLAG, ["pos", 0], "ids", ("pos[0]",)), (GOOD_FLAG, ["neg"], None, ("neg",)),
               (GOOD_FLAG, ["neg", 1], "ids", ("neg[1]",))]
SECOND_PAIR = {**GOOD_PAIR, "qid": "q2", "pid": "p2"}  # another pair: a mutated line is never a duplicate by accident
PAIR_CASES = [(["qid"], "plain id"), (["pid"], "plain id"), (["qry"], "content"), (["psg"], "content")]


def _accepted(kind: str | None, value):
    """The value as the reader must keep it, or None where it must be refused. An id is a non-blank string or an
    integer (read as its decimal string); a plain id has no whitespace either; token ids are a non-empty list of
    integers in [0, VOCAB); content is non-blank text or token ids. Objects and lists of passages (kind None) hold
    no value of a scalar type."""
    ids = isinstance(value, list) and value and all(type(t) is int and 0 <= t < VOCAB for t in value)
    as_id = str(value) if type(value) is int else value if isinstance(value, str) and value.strip() else None
    if kind == "id":
        return as_id
    if kind == "plain id":
        return as_id if as_id is not None and as_id == "".join(as_id.split()) else None
    if kind == "ids":
        return value if ids else None
    if kind == "content":
        return value if ids or (isinstance(value, str) and value.strip()) else None
    return None


def _read_back(record: dict, path: list):
    """The value at `path` in a converted record ({qid, query, pos: [{pid, passage}], neg}): the Reranker's `qry`
    is flattened, FlagEmbedding's bare passages are wrapped."""
    node = record
    for key in path[1:] if path[0] == "qry" else path:
        node = node[key]
    return node["passage"] if isinstance(node, dict) else node


def _assert_located(error: InputError, path, fields) -> None:
    assert error.path == str(path) and error.line == 2, str(error)
    assert error.field is not None and error.field.startswith(fields), str(error)
    assert str(error).startswith(f"{path}:2: field '{error.field}': "), str(error)


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
    """A value of the wrong type is refused naming file, line and field; one of the right type is kept (an
    integer id as its decimal string)."""
    good, where, kind, fields = case
    tmp = tmp_path_factory.mktemp("g")
    path = tmp / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(_mutate(good, where, value)) + "\n")
    expected = _accepted(kind, value)
    try:
        dataset = load_groups(path, VOCAB, 3, cache_dir=str(tmp / "cache"))
    except InputError as e:
        assert expected is None, f"{value!r} at {where} refused: {e}"
        _assert_located(e, path, fields)
    else:
        assert expected is not None, f"{value!r} at {where} accepted"
        assert len(dataset) == 2 and _read_back(dataset[1], where) == expected


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
@given(case=st.sampled_from(PAIR_CASES), value=ODD_VALUES)
def test_pair_format_wrong_types(tmp_path_factory, case, value):
    """A value of the wrong type is refused naming file, line and field; one of the right type is kept (an
    integer id as its decimal string)."""
    (field,), kind = case
    path = tmp_path_factory.mktemp("p") / "pairs.jsonl"
    path.write_text(json.dumps(GOOD_PAIR) + "\n" + json.dumps(_mutate(SECOND_PAIR, [field], value)) + "\n")
    expected = _accepted(kind, value)
    try:
        candidates = read_pair_candidates(path, VOCAB)
    except InputError as e:
        assert expected is None, f"{value!r} as {field} refused: {e}"
        _assert_located(e, path, (field,))
    else:
        assert expected is not None, f"{value!r} as {field} accepted"
        second = [c for c in candidates if (c.qid, c.pid) != ("q1", "p1")]
        attribute = {"qid": "qid", "pid": "pid", "qry": "query", "psg": "passage"}[field]
        assert len(candidates) == 2 and getattr(second[0], attribute) == expected


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
