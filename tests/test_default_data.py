"""The bundled default task built from the standard library's own docstrings."""
import json
import textwrap

import pytest

from bigrerank.data.collection import read_corpus, read_qrels, read_queries
from bigrerank.data.default_data import collect_entries, summarize, unique_summaries, write_default_data


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "data"
    sizes = write_default_data(out, train_size=300, test_size=100)
    return out, sizes


def test_layout_and_sizes(default_dir):
    out, sizes = default_dir
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "qrels", "queries.jsonl"]
    assert sorted(p.name for p in (out / "qrels").iterdir()) == ["test.tsv", "train.tsv"]
    assert sizes["documents"] > 2000 and sizes["train_queries"] == 300 and sizes["test_queries"] == 100
    assert len(read_corpus(out / "corpus.jsonl")) == sizes["documents"]


def test_every_query_has_its_document_and_splits_are_disjoint(default_dir):
    out, _ = default_dir
    corpus, queries = read_corpus(out / "corpus.jsonl"), read_queries(out / "queries.jsonl")
    train, test = read_qrels(out / "qrels" / "train.tsv"), read_qrels(out / "qrels" / "test.tsv")
    assert set(train).isdisjoint(test)
    assert set(train) | set(test) == set(queries)
    for qrels in (train, test):
        for qid, judged in qrels.items():
            assert len(judged) == 1 and set(judged.values()) == {1}
            assert set(judged) <= set(corpus)
    train_docs = {d for judged in train.values() for d in judged}
    assert train_docs.isdisjoint(d for judged in test.values() for d in judged)


def test_queries_are_real_and_not_copied_into_their_documents(default_dir):
    out, _ = default_dir
    corpus, queries = read_corpus(out / "corpus.jsonl"), read_queries(out / "queries.jsonl")
    qrels = {**read_qrels(out / "qrels" / "train.tsv"), **read_qrels(out / "qrels" / "test.tsv")}
    assert len(set(queries.values())) == len(queries)
    for qid, text in queries.items():
        assert len(text.split()) >= 4
        (doc_id,) = qrels[qid]
        title, body = corpus[doc_id]
        assert title == doc_id and body.strip()
        assert text not in body  # the docstring was cut out of the source


@pytest.mark.slow
def test_deterministic(default_dir, tmp_path):
    out, _ = default_dir
    again = tmp_path / "again"
    write_default_data(again, train_size=300, test_size=100)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def _fake_stdlib(root):
    files = {
        "alpha.py": '''
            """Module docstring."""
            def parse_header(line, strict=False):
                """Parse one header line into a name and a value.

                More details that are not part of the query.
                """
                name, _, value = line.partition(":")
                return name.strip(), value.strip()

            def _private_helper(x):
                """Compute the private helper value quickly."""
                y = x + 1
                return y * 2

            class Buffer:
                """A growable byte buffer with a read cursor."""
                def __init__(self):
                    self.data = bytearray()
                def append(self, chunk):
                    """Append a chunk of bytes to the buffer end."""
                    self.data += chunk
                    return len(self.data)
            ''',
        "beta.py": '''
            def parse_header_line(line, strict=False):
                """Parse one header line into a name and value."""
                name, _, rest = line.partition("=")
                return name, rest

            def too_short():
                """Nothing."""
                a = 1
                return a
            ''',
        "broken.py": "def oops(:\n    pass\n",
        "tests/test_alpha.py": '''
            def test_parse_header_works():
                """Check that the header parser really works."""
                assert parse_header("a=1") == ("a", "1")
            ''',
    }
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_entries_from_source_without_docstrings_or_private_names(tmp_path):
    _fake_stdlib(tmp_path)
    entries = {e.doc_id: e for e in collect_entries(tmp_path)}
    assert set(entries) == {"alpha.parse_header", "alpha.Buffer", "alpha.Buffer.append",
                            "beta.parse_header_line", "beta.too_short"}
    header = entries["alpha.parse_header"]
    assert header.summary == "Parse one header line into a name and a value."
    assert header.text.startswith("def parse_header(line, strict=False):\n    name, _, value")
    assert '"""' not in header.text and "More details" not in header.text
    assert "growable" not in entries["alpha.Buffer"].text and "Append a chunk" not in entries["alpha.Buffer"].text
    assert entries["beta.too_short"].summary == ""  # one-word docstring: a document, never a query


def test_near_duplicate_summaries_leave_the_queries(tmp_path):
    _fake_stdlib(tmp_path)
    kept = {e.doc_id for e in unique_summaries([e for e in collect_entries(tmp_path) if e.summary])}
    assert kept == {"alpha.Buffer", "alpha.Buffer.append"}


@pytest.mark.parametrize("docstring, expected", [
    ("Return the  sum of\n    two numbers.\n\nDetails.", "Return the sum of two numbers."),
    ("Too short.", None),
    (">>> import io\n>>> io.BytesIO()", None),
    ("Deprecated alias kept for backwards compatibility.", None),
])
def test_summarize(docstring, expected):
    assert summarize(docstring) == expected


def test_too_few_queries_is_an_error(tmp_path):
    _fake_stdlib(tmp_path / "lib")
    with pytest.raises(ValueError, match="usable queries"):
        write_default_data(tmp_path / "out", train_size=5, test_size=5, root=tmp_path / "lib")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["lib"]


def test_corpus_lines_are_beir_json(default_dir):
    out, _ = default_dir
    first = json.loads((out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"_id", "title", "text"}
