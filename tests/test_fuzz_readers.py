"""Fuzzed collection readers: valid files round-trip; every bad file raises InputError naming the file (and
the line where one applies), never an exception from deep inside a library."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bigrerank.data.collection import read_corpus, read_qrels, read_queries, read_run
from bigrerank.errors import InputError

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Ids of whitespace-separated formats: printable, no whitespace of any kind (str.split() splits on all of it).
ids = st.text(st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=12).filter(
    lambda s: not any(c.isspace() for c in s))
# Field text of tsv files: anything but tab, newline and carriage return.
tsv_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\t\n\r"), max_size=40)
# Field text of JSON lines: any valid Unicode (json escapes newlines and tabs).
json_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
nonblank = lambda s: bool(s.strip())  # noqa: E731
grades = st.integers(min_value=-1, max_value=4)
scores = st.floats(allow_nan=False, allow_infinity=False, width=64)
wrong_types = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])

READERS = {
    "corpus.jsonl": read_corpus, "corpus.tsv": read_corpus, "queries.jsonl": read_queries,
    "queries.tsv": read_queries, "qrels.txt": read_qrels,
    "run.trec": lambda p: read_run(p, "trec"), "run.marco": lambda p: read_run(p, "marco"),
    "run.scores": lambda p: read_run(p, "scores"),
    "run.auto-trec": read_run, "run.auto-marco": read_run, "run.auto-scores": read_run,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(directory: Path, name: str, content: bytes | str) -> Path:
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def expect_input_error(reader, path: Path, line: int | None = None) -> InputError:
    """The reader raises InputError whose message starts with the file (and `:line` when given)."""
    with pytest.raises(InputError) as caught:
        reader(path)
    where = str(path) if line is None else f"{path}:{line}:"
    assert str(caught.value).startswith(where), (str(caught.value), where)
    return caught.value


def read_or_input_error(reader, path: Path):
    """Either a result or an InputError naming the file: nothing else may escape."""
    try:
        return reader(path)
    except InputError as e:
        assert str(e).startswith(str(path)), str(e)
        return None


# ---------------------------------------------------------------- valid inputs round-trip

@FUZZ
@given(docs=st.dictionaries(ids, st.tuples(json_text, json_text).filter(lambda d: nonblank(d[0]) or nonblank(d[1])),
                            min_size=1, max_size=8),
       int_ids=st.booleans(), with_title=st.booleans())
def test_corpus_jsonl_round_trips(workdir, docs, int_ids, with_title):
    def key(doc_id):  # canonical integer ids may be written as JSON numbers
        canonical = doc_id.isascii() and doc_id.isdigit() and str(int(doc_id)) == doc_id
        return int(doc_id) if int_ids and canonical else doc_id
    if not with_title:
        docs = {k: ("", text if nonblank(text) else "x") for k, (_, text) in docs.items()}
    lines = [json.dumps({"_id": key(k), **({"title": title} if with_title else {}), "text": text}, ensure_ascii=False)
             for k, (title, text) in docs.items()]
    assert read_corpus(write(workdir, "corpus.jsonl", "\n".join(lines) + "\n")) == docs


@FUZZ
@given(docs=st.dictionaries(ids, st.tuples(tsv_text, tsv_text), min_size=1, max_size=8), crlf=st.booleans())
def test_corpus_tsv_round_trips(workdir, docs, crlf):
    end = "\r\n" if crlf else "\n"
    lines = [f"{k}\t{text}\t{title}" if title else f"{k}\t{text}" for k, (title, text) in docs.items()]
    assert read_corpus(write(workdir, "corpus.tsv", end.join(lines) + end)) == docs


@FUZZ
@given(queries=st.dictionaries(ids, json_text.filter(nonblank), min_size=1, max_size=8))
def test_queries_jsonl_round_trip(workdir, queries):
    lines = [json.dumps({"_id": k, "text": v, "metadata": {}}) for k, v in queries.items()]
    assert read_queries(write(workdir, "queries.jsonl", "\n".join(lines))) == queries


@FUZZ
@given(queries=st.dictionaries(ids, tsv_text, min_size=1, max_size=8))
def test_queries_tsv_round_trip(workdir, queries):
    assert read_queries(write(workdir, "queries.tsv", "".join(f"{k}\t{v}\n" for k, v in queries.items()))) == queries


@FUZZ
@given(qrels=st.dictionaries(ids, st.dictionaries(ids, grades, min_size=1, max_size=4), min_size=1, max_size=5),
       beir=st.booleans())
def test_qrels_round_trip_in_trec_and_beir_layouts(workdir, qrels, beir):
    rows = [(q, d, g) for q, judged in qrels.items() for d, g in judged.items()]
    text = "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in rows) if beir else \
        "".join(f"{q} 0 {d} {g}\n" for q, d, g in rows)
    assert read_qrels(write(workdir, "qrels.txt", text)) == qrels


rankings = st.dictionaries(ids, st.lists(ids, min_size=1, max_size=6, unique=True), min_size=1, max_size=4)


@FUZZ
@given(ranking=rankings, data=st.data())
def test_runs_round_trip_in_every_format(workdir, ranking, data):
    """TREC (rank + score), MS MARCO (rank) and `qid pid score` files, rows shuffled; auto-detected and named."""
    rows = []
    for qid, docs in ranking.items():
        doc_scores = sorted(data.draw(st.lists(scores, min_size=len(docs), max_size=len(docs), unique=True)),
                            reverse=True)
        rows += [(qid, d, rank, score) for rank, (d, score) in enumerate(zip(docs, doc_scores), start=1)]
    shuffled = data.draw(st.permutations(rows))  # MS MARCO rows stay in rank order: ranks are all they have
    expected_docs = {qid: docs for qid, docs in ranking.items()}
    files = {
        "trec": "".join(f"{q} Q0 {d} {r} {s!r} bm25\n" for q, d, r, s in shuffled),
        "marco": "".join(f"{q}\t{d}\t{r}\n" for q, d, r, _ in rows),
        "scores": "".join(f"{q}\t{d}\t{s!r}\n" for q, d, _, s in shuffled),
    }
    for fmt, text in files.items():
        path = write(workdir, f"run.{fmt}", text)
        for requested in (fmt, "auto"):
            run = read_run(path, requested)
            assert {q: [d for d, _ in docs] for q, docs in run.items()} == expected_docs, (fmt, requested)
            if fmt != "marco":
                assert all(docs == sorted(docs, key=lambda x: -x[1]) for docs in run.values())


@FUZZ
@given(doc_id=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\t\n\r"), min_size=200,
                      max_size=2000).filter(nonblank))
def test_huge_string_ids_are_kept_whole(workdir, doc_id):
    assert list(read_corpus(write(workdir, "corpus.jsonl", json.dumps({"_id": doc_id, "text": "t"}) + "\n"))) == \
        [doc_id]


# ---------------------------------------------------------------- bad inputs name the file and line

VALID = {
    "corpus.jsonl": ['{"_id": "d1", "title": "t", "text": "one"}', '{"_id": "d2", "text": "two"}',
                     '{"_id": 3, "title": "", "text": "three"}'],
    "corpus.tsv": ["d1\tone", "d2\ttwo\ttitle", "d3\tthree"],
    "queries.jsonl": ['{"_id": "q1", "text": "one"}', '{"_id": "q2", "text": "two"}', '{"_id": "q3", "text": "x"}'],
    "queries.tsv": ["q1\tone", "q2\ttwo", "q3\tthree"],
    "qrels.txt": ["q1 0 d1 1", "q1 0 d2 0", "q2 0 d1 2"],
    "run.trec": ["q1 Q0 d1 1 2.5 r", "q1 Q0 d2 2 1.5 r", "q2 Q0 d1 1 0.5 r"],
    "run.marco": ["q1\td1\t1", "q1\td2\t2", "q2\td1\t1"],
    "run.scores": ["q1\td1\t2.5", "q1\td2\t-1e3", "q2\td1\t0.25"],
}
VALID.update({f"run.auto-{fmt}": VALID[f"run.{fmt}"] for fmt in ("trec", "marco", "scores")})
names = st.sampled_from(sorted(VALID))


def test_the_valid_base_files_read(workdir):
    for name, lines in VALID.items():
        assert READERS[name](write(workdir, name, "\n".join(lines) + "\n"))


@FUZZ
@given(name=names, line=st.integers(0, 2), column=st.integers(0, 40), junk=bad_utf8)
def test_bad_utf8_names_file_and_line(workdir, name, line, column, junk):
    lines = [text.encode() for text in VALID[name]]
    cut = min(column, len(lines[line]))
    lines[line] = lines[line][:cut] + junk + lines[line][cut:]
    error = expect_input_error(READERS[name], write(workdir, name, b"\n".join(lines) + b"\n"), line + 1)
    assert "UTF-8" in error.reason


def wrong_column_line(name: str, count: int) -> str:
    """A line of `count` numeric columns in the file's separator (numeric: no header look-alike)."""
    return ("\t" if name.endswith(("tsv", "marco", "scores")) else " ").join(str(i + 1) for i in range(count))


ALLOWED_COLUMNS = {"corpus.tsv": {2, 3}, "queries.tsv": {2}, "qrels.txt": {3, 4}, "run.trec": {6}, "run.marco": {3},
                   "run.scores": {3}, **{f"run.auto-{fmt}": {3, 6} for fmt in ("trec", "marco", "scores")}}


@FUZZ
@given(name=st.sampled_from(sorted(ALLOWED_COLUMNS)), line=st.integers(0, 2), count=st.integers(1, 9))
def test_wrong_column_count_names_file_and_line(workdir, name, line, count):
    assume(count not in ALLOWED_COLUMNS[name])
    lines = list(VALID[name])
    lines[line] = wrong_column_line(name, count)
    error = expect_input_error(READERS[name], write(workdir, name, "\n".join(lines) + "\n"), line + 1)
    assert "column" in error.reason


@FUZZ
@given(name=st.sampled_from(["corpus.jsonl", "queries.jsonl"]), line=st.integers(0, 2),
       field=st.sampled_from(["_id", "text"]), value=wrong_types, drop=st.booleans())
def test_wrong_json_types_and_missing_fields_name_the_field(workdir, name, line, field, value, drop):
    lines = [json.loads(text) for text in VALID[name]]
    if drop:
        del lines[line][field]
    else:
        lines[line][field] = value
    path = write(workdir, name, "\n".join(json.dumps(obj) for obj in lines) + "\n")
    error = expect_input_error(READERS[name], path, line + 1)
    assert error.field == field


@FUZZ
@given(name=st.sampled_from(["corpus.jsonl", "queries.jsonl"]), line=st.integers(0, 2),
       digits=st.integers(4301, 6000))
def test_huge_integer_ids_are_input_errors(workdir, name, line, digits):
    """Python refuses int <-> str conversions beyond 4300 digits; the reader must say which line."""
    lines = list(VALID[name])
    lines[line] = '{"_id": %s, "text": "t"}' % ("7" * digits)
    expect_input_error(READERS[name], write(workdir, name, "\n".join(lines) + "\n"), line + 1)


@FUZZ
@given(name=st.sampled_from(["corpus.jsonl", "queries.jsonl"]), depth=st.integers(1000, 100_000))
def test_deeply_nested_json_is_an_input_error(workdir, name, depth):
    expect_input_error(READERS[name], write(workdir, name, VALID[name][0] + "\n" + "[" * depth + "]" * depth + "\n"),
                       2)


huge_numbers = st.tuples(st.sampled_from("123456789"), st.text("0123456789", min_size=309, max_size=5000)).map("".join)


@FUZZ
@given(name=st.sampled_from(["run.marco", "run.trec", "run.auto-marco", "run.auto-trec"]), line=st.integers(0, 2),
       rank=st.one_of(huge_numbers, st.sampled_from(["\u00b2", "\u2468", "x1"])))
def test_unusable_ranks_are_input_errors(workdir, name, line, rank):
    """Ranks beyond float range or int() (superscripts, 5000 digits) are the user's error, at their line."""
    lines = [text.split() for text in VALID[name]]
    lines[line][3 if name.endswith("trec") else 2] = rank
    path = write(workdir, name, "\n".join(" ".join(cols) for cols in lines) + "\n")
    expect_input_error(READERS[name], path, line + 1)


@FUZZ
@given(name=names, data=st.data())
def test_truncated_files_read_or_name_the_file(workdir, name, data):
    content = ("\n".join(VALID[name]) + "\n").encode()
    cut = data.draw(st.integers(0, len(content)))
    result = read_or_input_error(READERS[name], write(workdir, name, content[:cut]))
    if cut == len(content):
        assert result
    if cut == 0:
        assert result is None


@FUZZ
@given(name=names, content=st.binary(max_size=200))
def test_random_bytes_read_or_name_the_file(workdir, name, content):
    read_or_input_error(READERS[name], write(workdir, name, content))


@FUZZ
@given(name=names, line=st.integers(0, 3), junk=st.text(st.characters(exclude_categories=("Cs",)), max_size=60))
def test_random_lines_read_or_name_the_file(workdir, name, line, junk):
    lines = list(VALID[name])
    lines.insert(line, junk.replace("\n", " ").replace("\r", " "))
    read_or_input_error(READERS[name], write(workdir, name, "\n".join(lines) + "\n"))


def test_missing_file_and_directory_are_input_errors(workdir):
    for name, reader in READERS.items():
        expect_input_error(reader, workdir / "absent" / name)
        (workdir / f"dir-{name}").mkdir(exist_ok=True)
        expect_input_error(reader, workdir / f"dir-{name}")
