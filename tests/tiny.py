"""Tiny models and tokenizers built locally from a config: no hub, no network, fast on CPU."""
from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

WORDS = ["the", "what", "is", "of", "in", "new", "york", "weather", "cold", "today", "it", "python", "code"]


def tiny_vocab() -> dict[str, int]:
    """A WordPiece vocab that can spell any lowercase ASCII text (characters and ##characters)."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars, *[f"##{c}" for c in chars]]
    return {token: i for i, token in enumerate(vocab)}


def tiny_tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=True)


def tiny_config(vocab_size: int, dropout: float = 0.0, init_range: float = 0.02) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, num_labels=1, initializer_range=init_range,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def tiny_model_dir(directory, dropout: float = 0.0, seed: int = 0, init_range: float = 0.02) -> Path:
    """Save a randomly initialised tiny BERT reranker and its tokenizer as a Hugging Face directory.

    A larger `init_range` spreads the scores, so gradients are not a near-cancelling sum (better
    conditioned for exactness tests)."""
    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_config(len(tokenizer), dropout, init_range))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory



def spread_model_dir(directory, seed: int = 0) -> Path:
    """A tiny reranker whose scores differ clearly between pairs (random init at std 0.02 gives near-constants)."""
    tiny_model_dir(directory, seed=seed)
    model = BertForSequenceClassification.from_pretrained(directory)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(directory)
    return Path(directory)

def write_groups(path, queries: int = 16, negatives: int = 7, seed: int = 0, as_ids_of=None) -> Path:
    """A learnable grouped training file: each positive repeats its query's words and says "new york";
    negatives are random words without those two.

    Text by default; with `as_ids_of=tokenizer`, the same text as token ids without special tokens.
    """
    import json
    import random

    rng = random.Random(seed)
    vocab = [w for w in WORDS if w not in ("new", "york")] + [f"{a}{b}" for a in "abcdefgh" for b in "xyz"]

    def words(n):
        return " ".join(rng.choice(vocab) for _ in range(n))

    def body(text):
        return as_ids_of(text, add_special_tokens=False)["input_ids"] if as_ids_of else text

    path = Path(path)
    with open(path, "w") as f:
        for q in range(queries):
            query = words(3)
            record = {"qry": {"qid": f"q{q}", "query": body(query)},
                      "pos": [{"pid": f"p{q}", "passage": body(f"{query} new york {words(2)}")}],
                      "neg": [{"pid": f"n{q}-{i}", "passage": body(words(7))} for i in range(negatives)]}
            f.write(json.dumps(record) + "\n")
    return path


def write_beir(directory, corpus: dict[str, tuple[str, str]], queries: dict[str, str]) -> None:
    """corpus.jsonl ({_id, title, text}) and queries.jsonl ({_id, text}) in BEIR layout."""
    import json

    directory = Path(directory)
    with open(directory / "corpus.jsonl", "w") as f:
        for doc_id, (title, text) in corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(directory / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")


def with_teacher_scores(path, flag: bool = False):
    """Give every passage of a write_groups file a distinct teacher score, 100 * line + passage index, in the
    Reranker's layout (`score` per passage) or, with `flag`, FlagEmbedding's (`pos_scores`/`neg_scores`)."""
    import json

    lines = []
    for number, line in enumerate(path.read_text().splitlines()):
        obj = json.loads(line)
        passages = obj["pos"] + obj["neg"]
        for i, passage in enumerate(passages):
            passage["score"] = 100.0 * number + i
        if flag:
            obj = {"query": obj["qry"]["query"], "pos": [p["passage"] for p in obj["pos"]],
                   "neg": [n["passage"] for n in obj["neg"]], "pos_scores": [p["score"] for p in obj["pos"]],
                   "neg_scores": [n["score"] for n in obj["neg"]]}
        lines.append(json.dumps(obj))
    path.write_text("\n".join(lines) + "\n")
    return path


EVAL_WORDS = ["the", "what", "is", "of", "in", "weather", "cold", "today", "it", "python", "code"]  # no "new york"


def write_eval_set(directory: Path, queries: int = 6, depth: int = 5, seed: int = 1) -> dict[str, Path]:
    """One eval set in both rerank forms: a BEIR corpus/queries with a TREC run, and the same pairs as JSON lines
    with their ids file; one relevant document per query (its words and "new york"), judged in the qrels."""
    rng = random.Random(seed)

    def words(n):
        return " ".join(rng.choice(EVAL_WORDS + [f"{a}{b}" for a in "abcdef" for b in "xyz"]) for _ in range(n))

    corpus, texts, run, qrels, pairs, ids = {}, {}, [], [], [], []
    for q in range(queries):
        qid, texts[f"q{q}"] = f"q{q}", words(3)
        docs = [(f"d{q}-{i}", f"{texts[qid]} new york {words(2)}" if i == 0 else words(7)) for i in range(depth)]
        rng.shuffle(docs)
        for rank, (pid, text) in enumerate(docs, start=1):
            corpus[pid] = ("", text)
            run.append(f"{qid} Q0 {pid} {rank} {10.0 - rank} bm25\n")
            pairs.append(json.dumps({"qry": texts[qid], "psg": text}) + "\n")
            ids.append(f"{qid}\t{pid}\n")
        qrels.append(f"{qid} 0 d{q}-0 1\n")
    directory.mkdir(parents=True, exist_ok=True)
    write_beir(directory, corpus, texts)
    files = {"run": directory / "run.trec", "qrels": directory / "qrels.tsv", "pairs": directory / "pairs.jsonl",
             "ids": directory / "pairs.ids.tsv", "queries": directory / "queries.jsonl",
             "corpus": directory / "corpus.jsonl"}
    for name, lines in (("run", run), ("qrels", qrels), ("pairs", pairs), ("ids", ids)):
        files[name].write_text("".join(lines))
    return files
