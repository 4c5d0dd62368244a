"""The run writer: a ranked run as MS MARCO or TREC lines, for retrieval and conversion alike."""
from __future__ import annotations

FORMATS = ("marco", "trec")


def run_lines(run: dict[str, list[tuple[str, float]]], fmt: str, run_name: str = "bigrerank",
              score_format: str = ".9g"):
    """Lines of a ranked run ({qid: [(pid, score), ...] best first}) in MS MARCO or TREC format."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got '{fmt}'")
    for qid, ranked in run.items():
        for rank, (pid, score) in enumerate(ranked, start=1):
            if fmt == "marco":
                yield f"{qid}\t{pid}\t{rank}\n"
            else:
                yield f"{qid} Q0 {pid} {rank} {score:{score_format}} {run_name}\n"
