"""The tables of `bench/quality.py` (the group-size showcase and run summaries), from synthetic result files."""
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parent.parent / "bench" / "quality.py")
quality = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(quality)

QUERIES = [str(q) for q in range(6)]
BM25 = [0.2, 0.4, 0.1, 0.5, 0.3, 0.6]


def result(group: int, steps: int, seed: int, shift: float) -> dict:
    """One LCE run's result file: per-query nDCG@10 = BM25's + shift (query 0 gets twice the shift)."""
    lce = [v + shift * (2 if i == 0 else 1) for i, v in enumerate(BM25)]
    per_query = {name: {"nDCG@10": dict(zip(QUERIES, values)), "RR@10": dict(zip(QUERIES, values))}
                 for name, values in (("BM25", BM25), ("LCE", lce))}
    mean = sum(lce) / len(lce)
    row = {"system": "LCE", "nDCG@10": mean, "RR@10": mean, "train_wall_s": 100.0 * group * steps / 4800,
           "train": {"train_group_size": group, "max_steps": steps, "per_device_train_batch_size": 4, "seed": seed}}
    bm25 = {"system": "BM25", "nDCG@10": sum(BM25) / len(BM25), "RR@10": sum(BM25) / len(BM25)}
    return {"name": f"g{group}_steps{steps}_s{seed}", "rows": [bm25, row], "per_query": per_query}


def sections(text: str) -> dict[str, list[list[str]]]:
    """{budget title: table rows as cells} of the markdown the group-size table prints."""
    found, title = {}, None
    for line in text.splitlines():
        if line.startswith("**"):
            title = line
            found[title] = []
        elif line.startswith("| ") and not line.startswith("| G |"):
            found[title].append([cell.strip() for cell in line.strip("|").split("|")])
    return found


def test_group_table_budgets_and_cells():
    results = [result(8, 600, 1, 0.10), result(8, 600, 2, 0.12), result(32, 150, 1, 0.05), result(32, 150, 2, 0.07),
               result(8, 150, 1, 0.01), result(16, 150, 1, 0.03), result(16, 300, 1, 0.2)]
    tables = sections(quality.groups_table(results))
    assert list(tables) == ["**equal scored pairs** (G=8: 600 steps)", "**equal optimizer steps** (G=8: 150 steps)"]
    pairs = tables["**equal scored pairs** (G=8: 600 steps)"]
    assert [row[:4] for row in pairs] == [["8", "600", "19200", "1, 2"], ["16", "300", "19200", "1"],
                                         ["32", "150", "19200", "1, 2"]]
    g8_mean = (sum(BM25) / 6) + 0.11 * 7 / 6
    assert pairs[0][4].startswith(f"{g8_mean:.4f} ± ")  # mean ± sd over the two seeds
    assert pairs[0][7] == "(reference)"
    assert pairs[2][7].startswith(f"{(0.06 - 0.11) * 7 / 6:+.4f} (")  # seed-averaged G=32 minus G=8
    assert pairs[1][8].startswith(f"{0.2 * 7 / 6:+.4f} (")  # against BM25
    steps = tables["**equal optimizer steps** (G=8: 150 steps)"]
    assert [row[:2] for row in steps] == [["8", "150"], ["16", "150"], ["32", "150"]]
    assert steps[1][7].startswith(f"{0.02 * 7 / 6:+.4f} (")


def test_group_table_needs_the_g8_reference():
    with pytest.raises(SystemExit, match="G=8"):
        quality.groups_table([result(32, 150, 1, 0.05)])


def test_summary_compares_each_run_with_the_first(tmp_path, capsys):
    paths = []
    for name, shift in (("base", 0.1), ("other", 0.04)):
        data = result(8, 200, 1, shift)
        data.update(name=name, settings=f"settings of {name}")
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(quality.json.dumps(data))
    quality.summarize([str(p) for p in paths])
    out = capsys.readouterr().out
    assert "- base: settings of base" in out and "- other: settings of other" in out
    assert f"- nDCG@10 other LCE - base LCE: {-0.06 * 7 / 6:+.4f} (" in out


def test_distill_needs_a_teacher():
    with pytest.raises(SystemExit):
        quality.parse_args(["--collection", "scifact", "--losses", "distill"])
    args = quality.parse_args(["--collection", "scifact", "--losses", "distill", "--teacher", "t", "--threads", "1"])
    assert args.teacher == "t" and args.threads == 1


def seed_result(seed: int, lce_shift: float, bce_shift: float, **recipe) -> dict:
    """One run with LCE and BCE rows at `seed`: per-query nDCG@10 = BM25's + each loss's shift (query 0: twice)."""
    data = result(16, 600, seed, lce_shift)
    (lce,) = [row for row in data["rows"] if row["system"] == "LCE"]
    lce["train"].update(recipe)
    bce_values = [v + bce_shift * (2 if i == 0 else 1) for i, v in enumerate(BM25)]
    mean = sum(bce_values) / len(bce_values)
    data["rows"].append({**lce, "system": "BCE", "nDCG@10": mean, "RR@10": mean, "train": {**lce["train"], "loss": "bce"}})
    lce["train"]["loss"] = "lce"
    data["per_query"]["BCE"] = {metric: dict(zip(QUERIES, bce_values)) for metric in ("nDCG@10", "RR@10")}
    return data


def test_seeds_table_rows_spread_and_pooled_test():
    text = quality.seeds_table([seed_result(3, 0.10, 0.04), seed_result(2, 0.05, 0.07), seed_result(4, 0.12, 0.03)])
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "seed |" not in line]
    assert [row[0].strip() for row in rows] == ["2", "3", "4", "mean ± sd"]
    assert rows[0][3].strip().startswith(f"{-0.02 * 7 / 6:+.4f} (")  # seed 2: LCE behind BCE
    gaps = [0.06 * 7 / 6, -0.02 * 7 / 6, 0.09 * 7 / 6]
    assert rows[3][3].strip().startswith(f"{sum(gaps) / 3:.4f} ± ")
    mean, sd = sum(gaps) / 3, (sum((g - sum(gaps) / 3) ** 2 for g in gaps) / 2) ** 0.5
    t = mean / (sd / 3 ** 0.5)  # 2 degrees of freedom: two-sided p = 1 - t / sqrt(2 + t^2)
    assert f"LCE ahead on 2 of 3 seeds (paired t-test over the seeds: p {1 - t / (2 + t * t) ** 0.5:.3f})" in text
    assert f"LCE - BCE {sum(gaps) / 3:+.4f}" in text  # pooled: the seed-averaged per-query difference


def test_seeds_table_refuses_mixed_recipes_and_missing_bce():
    with pytest.raises(SystemExit, match="more than the seed"):
        quality.seeds_table([seed_result(2, 0.1, 0.0), seed_result(3, 0.1, 0.0, max_len=128)])
    lce_only = result(16, 600, 2, 0.1)
    with pytest.raises(SystemExit, match="LCE and BCE"):
        quality.seeds_table([lce_only])
