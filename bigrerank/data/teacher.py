"""Teacher scores for training groups (`bigrerank prepare train --teacher MODEL_DIR`): a trained reranker
scores every (query, passage) pair of every group, for `--loss distill`."""
from __future__ import annotations

from tqdm.auto import tqdm

CHUNK = 4096  # pairs tokenized at a time (then scored in length-sorted batches)


def teacher_scores(model_dir, pairs: list[tuple[str, str]], batch_size: int, max_len: int | None,
                   precision: str) -> list[float]:
    """The teacher's score of each (query text, passage text) pair, in order."""
    from ..inference.rerank import open_reranker

    reranker = open_reranker(model_dir, max_len=max_len, precision=precision)
    encoder, scores = reranker.encoder(), []
    with tqdm(total=len(pairs), unit="pair", desc="teacher") as bar:
        for start in range(0, len(pairs), CHUNK):
            queries, passages = zip(*pairs[start:start + CHUNK])
            scores += reranker.score_encoded(encoder.encode_texts(list(queries), list(passages)), batch_size, bar)
    return scores
