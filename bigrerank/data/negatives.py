"""Random corpus negatives for training groups (`bigrerank prepare train --random_negatives N`).

Each query's draw depends only on (seed, query id), so it is the same whatever the order or subset of queries;
it never returns an excluded document (a judged positive, a hard negative already chosen, an empty document).
"""
from __future__ import annotations

import random
from collections.abc import Iterable


class RandomNegatives:
    def __init__(self, documents: Iterable[str], count: int, seed: int):
        self.documents = sorted(documents)
        self.known = frozenset(self.documents)
        self.count, self.seed = count, seed

    def draw(self, qid: str, exclude: Iterable[str]) -> list[str]:
        """Up to `count` distinct documents outside `exclude`, uniformly at random, in draw order."""
        exclude = self.known & set(exclude)
        rng = random.Random(f"{self.seed}\t{qid}")  # a str seed is hashed with SHA-512: stable across processes
        if len(self.documents) - len(exclude) <= self.count:
            eligible = [d for d in self.documents if d not in exclude]
            rng.shuffle(eligible)
            return eligible
        picked: dict[str, None] = {}
        while len(picked) < self.count:
            document = self.documents[rng.randrange(len(self.documents))]
            if document not in exclude:
                picked[document] = None
        return list(picked)
