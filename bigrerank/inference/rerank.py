"""Reranking candidates with a trained model directory: open it, score the candidates (shared over the ranks when
launched), write the score file `qid<TAB>pid<TAB>score`.

Candidates are tokenized in chunks (ahead of the model, in a background thread), each chunk scored in
length-sorted, dynamically padded batches (sharded_scoring.py); with several ranks each scores a disjoint share
and rank 0 gathers the scores: those of a one-process run, up to the float rounding of other batch shapes.
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import atomic_file
from ..checkpoints.consolidate import TRAINING_INFO
from ..contract import make_encoder, resolve_contract
from ..data.candidates import Candidate, encode_candidates
from ..errors import InputError
from ..gguf_file import is_gguf
from ..model import load_config, load_tokenizer, max_len_problem
from ..sharded_scoring import score_sharded
from .reranker import RerankerForInference, effective_max_len


def require_model(model) -> Path:
    """The path of a model to score with: a Hugging Face directory, or a GGUF file this installation can read (its
    config read here, so an architecture transformers does not know is found before any work)."""
    model = Path(model)
    if is_gguf(model):
        load_config(model)
    elif not (model / "config.json").is_file():
        raise InputError(model, "not a Hugging Face model directory (no config.json) nor a .gguf file")
    return model


def check_scoring(model_dir, max_len: int | None = None, score_head: str | None = None, template: str | None = None,
                  instruction: str | None = None) -> None:
    """What `open_reranker` would refuse in the model's config, tokenizer and scoring contract, found without loading
    its weights: unknown head or template, and a pair length (--max_len) the template or the positions leave no room
    for."""
    model_dir = require_model(model_dir)
    config = load_config(model_dir)
    tokenizer = load_tokenizer(model_dir, config)
    contract = resolve_contract(str(model_dir), config, tokenizer, score_head, template, instruction)
    contract.head.check_scorable(config, model_dir)
    length = effective_max_len(max_len, contract, config, tokenizer)
    problem = max_len_problem(length, getattr(config, "max_position_embeddings", None))
    if problem:
        raise InputError("--max_len", problem)
    make_encoder(tokenizer, length, contract).require_room("--max_len")


def open_reranker(model_dir, **options) -> RerankerForInference:
    """`RerankerForInference.from_pretrained(model_dir, **options)`; a model it cannot use is an InputError."""
    model_dir = require_model(model_dir)
    try:
        return RerankerForInference.from_pretrained(model_dir, **options)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(model_dir, str(e)) from None


def trained_max_len(model_dir) -> int | None:
    """The pair length a bigrerank model was trained at (its TRAINING_INFO), None for other models."""
    path = Path(model_dir) / TRAINING_INFO
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("max_len")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise InputError(path, f"unreadable training record ({type(e).__name__})") from None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def score_candidates(reranker: RerankerForInference, candidates: list[Candidate], batch_size: int = 64,
                     chunk_size: int = 4096, tokenize_ahead: bool = True, show_progress: bool = True,
                     rank: int = 0, world: int = 1) -> list[float] | None:
    """Scores of `candidates` in order: this rank's share tokenized `chunk_size` at a time (the next chunk in a
    worker thread, with `tokenize_ahead`), on rank 0 with every rank's (None elsewhere)."""
    encoder = reranker.encoder()
    with tqdm(total=len(range(rank, len(candidates), world)), unit="pair", desc="rerank",
              disable=None if show_progress else True) as bar:
        return score_sharded(reranker.score_batch, candidates, batch_size,
                             encode=lambda chunk: encode_candidates(encoder, chunk), chunk_size=chunk_size,
                             ahead=tokenize_ahead, rank=rank, world=world, to_all=False, on_batch=bar.update)


def write_scores(path, candidates: list[Candidate], scores: list[float]) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        for candidate, score in zip(candidates, scores):
            f.write(f"{candidate.qid}\t{candidate.pid}\t{score:.9g}\n")
