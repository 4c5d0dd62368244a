"""Teacher scores for training groups (`bigrerank prepare train --teacher MODEL_DIR`): a trained reranker scores
every (query, passage) pair of every group, for `--loss distill`."""
from __future__ import annotations

from tqdm.auto import tqdm

from ..sharded_scoring import score_sharded
from .rerank import open_reranker

CHUNK = 4096  # pairs tokenized at a time (then scored in length-sorted batches)


def teacher_scores(model_dir, pairs: list[tuple[str, str]], batch_size: int, max_len: int | None,
                   precision: str) -> list[float]:
    """The teacher's score of each (query text, passage text) pair, in order."""
    reranker = open_reranker(model_dir, max_len=max_len, precision=precision)
    encoder = reranker.encoder()

    def encode(chunk):
        return encoder.encode_texts([query for query, _ in chunk], [passage for _, passage in chunk])

    with tqdm(total=len(pairs), unit="pair", desc="teacher") as bar:
        return score_sharded(reranker.score_batch, pairs, batch_size, encode=encode, chunk_size=CHUNK,
                             on_batch=bar.update)
