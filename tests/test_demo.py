"""The README's main job runs end to end: default data -> BM25 -> prepare -> train -> consolidate -> rerank -> eval."""
import json

import pytest

from bigrerank import cli
from tests.tiny import tiny_model_dir


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_both_rankings(tmp_path, capsys):
    model = tiny_model_dir(tmp_path / "model", init_range=0.2)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--model", str(model), "--steps", "3",
                     "--rerank_depth", "5"]) == 0
    printed = capsys.readouterr().out
    for command in ("bigrerank retrieve", "bigrerank prepare", "-m bigrerank.launch", "bigrerank rerank"):
        assert command in printed
    assert "--head_init_std 0.2" in printed  # the recipe's wider head init (the stdlib ablation: +0.026 nDCG@10)
    results = json.loads((out / "results.json").read_text())["results"]
    bm25, reranked = results["BM25"], results["BM25 >> reranker (top 5)"]
    assert set(bm25) == set(reranked) == {"nDCG@10", "RR@10", "R@100"}
    assert all(0.0 <= v <= 1.0 for v in [*bm25.values(), *reranked.values()])
    assert reranked["R@100"] == bm25["R@100"]  # only the top 5 are reordered; the rest keep BM25's order
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
