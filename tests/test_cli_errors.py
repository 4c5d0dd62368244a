"""Every user mistake is one line `bigrerank <command>: error: …`, exit code 2, nothing written; outputs never
replace inputs; runs are read one way (by score, format said, ambiguous ones refused); help that answers."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bigrerank import __version__, cli, distributed, ds_config
from bigrerank import model as model_loader
from bigrerank.checkpoints.consolidate import TRAINING_INFO, check_export_dir
from bigrerank.commands.train import parse as parse_train_args
from bigrerank.contract import CONTRACT_FILE, resolve_contract
from bigrerank.data.collection import read_run
from bigrerank.data.grouped import load_groups
from bigrerank.errors import InputError
from bigrerank.training.evaluation import read_eval_set
from tests.helpers import run_cli
from tests.tiny import spread_model_dir, tiny_model_dir, write_beir, write_groups
from tests.tiny_decoder import tiny_decoder_dir

REPO = Path(__file__).resolve().parent.parent
CORPUS = {"d1": ("new york", "it is cold today"), "d2": ("", "what is python"), "d3": ("code", "python code")}
QUERIES = {"q1": "weather in new york", "q2": "python code"}


@pytest.fixture
def work(tmp_path):
    """A directory of valid inputs for every command (and a fake model directory: these errors come before loading)."""
    write_beir(tmp_path, CORPUS, QUERIES)
    (tmp_path / "qrels.tsv").write_text("q1 0 d1 1\nq2 0 d3 1\n")
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 3.5 r\nq1 Q0 d2 2 1.5 r\nq2 Q0 d3 1 2.0 r\nq2 Q0 d2 2 1.0 r\n")
    (tmp_path / "scores.tsv").write_text("q1\td1\t0.5\nq1\td2\t0.25\nq2\td3\t1.5\n")
    (tmp_path / "q.ids.tsv").write_text("q1\tweather in new york\n")  # a queries file whose name `.ids.tsv` ends in
    (tmp_path / "ints.tsv").write_text("q1\td1\t5\nq1\td2\t3\nq2\td3\t2\n")  # integer scores: not ranks 1, 2, 3 …
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes\n")
    write_groups(tmp_path / "groups.jsonl", queries=4)
    template = {"template": "Q: {query} P: {passage}", "yes": "yes", "no": "no"}
    (tmp_path / "plain.json").write_text(json.dumps(template))  # no {instruction} slot
    (tmp_path / "same.json").write_text(json.dumps({**template, "no": "yes"}))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"qid": "q1", "pid": "d1", "qry": "cold", "psg": "it is"}) + "\n")
    (tmp_path / "part.trec").write_text("q1 Q0 d1 1 3.5 r\n")  # q1 alone
    (tmp_path / "empty.trec").write_text("")
    (tmp_path / "one.qrels").write_text("q1 0 d1 1\n")
    (tmp_path / "other.qrels").write_text("q7 0 d1 1\nq8 0 d1 1\n")
    (tmp_path / "bad_config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": "big"}))
    (tmp_path / "bad_model").mkdir()
    (tmp_path / "bad_model" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": "big"}))
    return tmp_path


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"" for p in sorted(directory.rglob("*"))}


TRAIN = ["--model_name_or_path", "{model}", "--train_path", "{groups}", "--output_dir", "{out}"]
RETRIEVE = ["--corpus", "{corpus}", "--queries", "{queries}"]
PREPARE_TRAIN = ["--corpus", "{corpus}", "--queries", "{queries}", "--qrels", "{qrels}", "--run", "{run}"]
PREPARE_RERANK = ["--corpus", "{corpus}", "--queries", "{queries}", "--run", "{run}"]
RERANK = ["--model", "{model}", "--run", "{run}", "--queries", "{queries}", "--corpus", "{corpus}"]
CASES = {
    # command: [(argv, what the one line must say)]
    "train": [
        (TRAIN + ["--loss", "foo"], "invalid choice: 'foo'"),
        (TRAIN + ["--report_to", "x"], "invalid choice: 'x'"),
        (TRAIN + ["--bf16", "--fp16"], "--bf16 and --fp16 are exclusive"),
        (TRAIN + ["--max_shard_size", "lots"], "--max_shard_size: 'lots' is not a size such as 5GB"),
        (TRAIN + ["--export_dtype", "int8"], "invalid choice: 'int8'"),
        (TRAIN + ["--train_group_size", "1"], "--train_group_size must be at least 2"),
        (TRAIN + ["--num_train_epochs", "0"], "--num_train_epochs must be above 0"),
        (TRAIN + ["--temperature", "0"], "--temperature must be above 0"),
        (TRAIN + ["--learning_rate=-1e-5"], "--learning_rate must be at least 0"),
        (TRAIN + ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1"),
        (TRAIN + ["--max_len", "0"], "--max_len must be at least 1"),
        (TRAIN + ["--save_total_limit", "0"], "--save_total_limit must be at least 1"),
        (TRAIN + ["--warmup_ratio", "1.5"], "--warmup_ratio must be at most 1"),
        (TRAIN + ["--no_such_flag", "3"], "unrecognized arguments: --no_such_flag 3"),
        (TRAIN + ["--eval_qrels", "{qrels}"], "--eval_qrels and the eval candidates (--eval_path or --eval_run) go"),
        (TRAIN + ["--eval_path", "{groups}"], "--eval_qrels and the eval candidates (--eval_path or --eval_run) go"),
        (TRAIN + ["--load_best_model_at_end"], "--load_best_model_at_end needs evaluation"),
        (TRAIN + ["--eval_path", "{groups}", "--eval_qrels", "{qrels}", "--metric_for_best_model", "Bogus@3"],
         "--metric_for_best_model: unknown metric 'Bogus@3'"),
        (TRAIN + ["--eval_path", "{groups}", "--eval_qrels", "{qrels}", "--load_best_model_at_end",
                  "--eval_steps", "30"],
         "--load_best_model_at_end needs --save_steps to be a round multiple of --eval_steps, got 500 and 30"),
        (TRAIN + ["--eval_path", "{groups}", "--eval_run", "{run}", "--eval_qrels", "{qrels}"],
         "give --eval_path or --eval_run, not both"),
        (TRAIN + ["--eval_run", "{run}", "--eval_queries", "{queries}", "--eval_qrels", "{qrels}"],
         "--eval_run needs --eval_queries and --eval_corpus"),
        (TRAIN + ["--eval_path", "{groups}", "--eval_depth", "5", "--eval_qrels", "{qrels}"],
         "--eval_queries, --eval_corpus, --eval_depth and --eval_run_format go with --eval_run"),
        (TRAIN + ["--eval_path", "{groups}", "--eval_run_format", "scores", "--eval_qrels", "{qrels}"],
         "--eval_queries, --eval_corpus, --eval_depth and --eval_run_format go with --eval_run"),
        (TRAIN + ["--eval_run", "{run}", "--eval_run_format", "csv"], "invalid choice: 'csv'"),
        (TRAIN + ["--eval_ids", "{scores}"], "--eval_ids goes with --eval_path"),
        (TRAIN + ["--eval_path", "{groups}", "--eval_qrels", "{qrels}", "--eval_steps", "0"],
         "--eval_steps must be at least 1"),
        (TRAIN + ["--eval_path", "{groups}", "--eval_qrels", "{qrels}", "--metric_for_best_model", "P@0"],
         "--metric_for_best_model: metric 'P@0': the cut-off after @ must be between 1 and 2147483647"),
    ],
    "retrieve": [
        (RETRIEVE + ["--output", "{run}.new", "--depth", "0"], "--depth must be at least 1"),
        (RETRIEVE + ["--output", "{corpus}"], "is also an input"),
        (RETRIEVE + ["--out", "{outdir}"], "is a directory"),
        (RETRIEVE + ["--output", "{afile}/run.trec"], "is not a directory"),
    ],
    "prepare": [
        (["train", *PREPARE_TRAIN, "--output", "{out}.jsonl", "--negatives", "0"], "--negatives must be at least 1"),
        (["train", *PREPARE_TRAIN, "--out", "{run}"], "is also an input"),
        (["train", *PREPARE_TRAIN, "--output", "{out}.jsonl", "--run_format", "csv"], "invalid choice: 'csv'"),
        (["rerank", *PREPARE_RERANK, "--output", "{queries}"], "is also an input"),
        # `prepare rerank` writes `<output>.ids.tsv` beside its output: naming an input that way is refused too
        (["rerank", "--corpus", "{corpus}", "--queries", "{dir}/q.ids.tsv", "--run", "{run}", "--output", "{dir}/q.jsonl"],
         "is also an input"),
        (["rerank", *PREPARE_RERANK, "--output", "{outdir}"], "is a directory"),
    ],
    "consolidate": [
        (["{dir}/no_checkpoint", "{mine}"], "not empty and holds no previous export"),
        (["{dir}/no_checkpoint", "{afile}"], "is not a directory"),
        (["--checkpoint", "{dir}", "--output", "{out}", "--tag"], "expected one argument"),
        (["{dir}/no_checkpoint", "{out}", "--max_shard_size", "5TB"], "--max_shard_size: '5TB' is not a size"),
        (["{dir}/no_checkpoint", "{out}", "--export_dtype", "fp8"], "invalid choice: 'fp8'"),
    ],
    "rerank": [
        (RERANK + ["--output", "{run}"], "is also an input"),
        (RERANK + ["--output", "{model}/config.json"], "is also an input"),
        (RERANK + ["--output", "{outdir}"], "is a directory"),
        (RERANK + ["--output", "{out}.tsv", "--batch_size", "0"], "--batch_size must be at least 1"),
        (RERANK + ["--output", "{out}.tsv", "--run_format", "x"], "invalid choice: 'x'"),
        (["--model", "{dir}/no_model", "--input", "{groups}", "--output", "{out}.tsv"], "no config.json"),
    ],
    "convert": [
        (["{scores}", "--to", "trec", "--output", "{scores}"], "is also an input"),
        (["{scores}", "--to", "trec", "--output", "{dir}/./scores.tsv"], "is also an input"),
        (["{ints}", "--to", "trec", "--output", "{out}.trec"], "ambiguous run"),
        (["{scores}", "--to", "trec", "--output", "{out}.trec", "--run_name", "a b"], "--run_name must be one word"),
        (["{scores}", "--to", "csv", "--output", "{out}.trec"], "invalid choice: 'csv'"),
    ],
    "eval": [
        (["--qrels", "{qrels}", "--run", "{scores}", "--output", "{qrels}"], "is also an input"),
        (["--qrels", "{qrels}", "--run", "{ints}", "--output", "{out}.json"], "pass --run_format marco or"),
        (["--qrels", "{qrels}", "--run", "{scores}", "--metrics", "Bogus@3"], "unknown metric 'Bogus@3'"),
        (["--qrels", "{qrels}", "--run", "{scores}", "--output", "{outdir}"], "is a directory"),
        (["--qrels", "{qrels}", "--run", "{run}", "--metrics", "nDCG@0"],
         "metric 'nDCG@0': the cut-off after @ must be between 1 and 2147483647"),
        (["--qrels", "{qrels}", "--compare", "{run}", "{dir}/part.trec"],
         "part.trec: ranks no documents for judged query 'q2' of"),
        (["--qrels", "{qrels}", "--compare", "{dir}/part.trec", "{run}"], "compared runs must rank the same judged"),
        (["--qrels", "{qrels}", "--compare", "{run}", "{dir}/empty.trec"], "empty.trec: empty run"),
        (["--qrels", "{dir}/one.qrels", "--compare", "{run}", "{scores}"],
         "one.qrels: 1 judged query: a paired test needs at least 2"),
        (["--qrels", "{dir}/other.qrels", "--compare", "{run}", "{scores}"], "no judged query is ranked by"),
    ],
    "hostfile": [
        (["--output", "{outdir}"], "is a directory"),
        (["--slots_from", "cpus"], "invalid choice: 'cpus'"),
    ],
    "demo": [
        (["--steps", "0", "--output", "{out}"], "--steps must be at least 1"),
    ],
}
# the tiny decoder's qwen3-reranker prompt is 111 tokens: 115 holds 2 query and 2 passage tokens more
NO_ROOM = "--max_len 20 leaves no room for a query and a passage; the template takes 111 tokens, use --max_len ≥ 115"
DECODER_TRAIN = ["--model_name_or_path", "{decoder}", "--train_path", "{groups}", "--output_dir", "{out}",
                 "--score_head", "yes_no"]
EVAL_RUN = ["--eval_run", "{run}", "--eval_queries", "{queries}", "--eval_corpus", "{corpus}",
            "--eval_qrels", "{qrels}"]
CASES["train"] += [
    (DECODER_TRAIN + ["--max_len", "20"], NO_ROOM),
    (DECODER_TRAIN + ["--max_len", "20", *EVAL_RUN], NO_ROOM),
    (DECODER_TRAIN + ["--eval_path", "{dir}/pairs.jsonl", "--eval_qrels", "{dir}/other.qrels"],
     "other.qrels: --eval_qrels: none of its 2 judged queries has eval candidates"),
    (DECODER_TRAIN + ["--max_len", "114"], NO_ROOM.replace("20", "114")),
    (DECODER_TRAIN + ["--template", "{dir}/same.json"], "yes 'yes' and no 'yes' are the same token"),
    (DECODER_TRAIN[:-1] + ["classifier", "--keep_causal_lm"],
     "--keep_causal_lm: keeps a yes_no model a causal LM; this model's score head is classifier"),
    (DECODER_TRAIN[:-1] + ["classifier", "--lora_r", "4", "--lora_target_modules", "score"],
     "--lora_target_modules: 'score' is in the classifier score head, which LoRA does not adapt: it trains in full"),
    (DECODER_TRAIN + ["--template", "{dir}/plain.json", "--instruction", "judge"],
     "--instruction: the plain template has no {instruction} slot"),
    (DECODER_TRAIN[:-1] + ["classifier", "--template", "pair", "--instruction", "judge"],
     "--instruction: the pair template has no {instruction} slot"),
]
DECODER_RERANK = ["--model", "{decoder}", *RERANK[2:], "--output", "{out}.tsv"]
CASES["rerank"] += [
    (DECODER_RERANK + ["--score_head", "yes_no", "--max_len", "20"], NO_ROOM),
    (DECODER_RERANK + ["--score_head", "classifier"],
     "the checkpoint is a causal LM (Qwen3ForCausalLM) without a trained classification head"),
    (DECODER_RERANK + ["--instruction", "judge", "--template", "{dir}/plain.json"],
     "--instruction: the plain template has no {instruction} slot"),
]
CASES["plan"] = [
    (["--model", "{decoder}", "--gpus_per_node", "0", "--score_head", "yes_no", "--max_len", "20"], NO_ROOM),
    (["--model", "{dir}/bad_config.json", "--gpus_per_node", "0"],
     "bad_config.json: not a valid model config (Validation error for field 'hidden_size'"),
    (["--model", "{dir}/bad_model", "--gpus_per_node", "0"],
     "bad_model: not a valid model config (Validation error for field 'hidden_size'"),
    (["--model", "{afile}", "--gpus_per_node", "0"], "afile: a file, not a model directory or a model's config.json"),
    (["--model", "{decoder}/config.json", "--gpus_per_node", "0", "--lora_r", "4", "--lora_target_modules", "qq"],
     "config.json: --lora_target_modules: the model has no module 'qq' (its block projections: mlp.down_proj"),
    (["--model", "{decoder}", "--gpus_per_node", "0", "--lora_r", "4", "--lora_target_modules", "lm_head"],
     "--lora_target_modules: 'lm_head' is in the yes_no score head, which LoRA does not adapt"),
]
FUSE = ["--runs", "{run}", "{scores}", "--output", "{out}.trec"]
CASES["fuse"] = [
    (FUSE + ["--weights", "nan", "nan"], "--weights: --method wsum: each weight must be a finite number of at least 0"),
    (FUSE + ["--weights", "1", "-1"], "--weights: --method wsum: each weight must be a finite number of at least 0"),
    (FUSE + ["--weights", "0", "0"], "--weights: --method wsum: weights that are all 0 give every document the same"),
    (FUSE + ["--method", "logn_isr", "--weights", "inf"], "--weights: --method logn_isr: sigma must be finite"),
]
TABLE = [(command, argv, message) for command, cases in CASES.items() for argv, message in cases]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny causal LM (Qwen3 architecture) with its tokenizer."""
    return tiny_decoder_dir(tmp_path_factory.mktemp("decoder"))


def _fill(argv: list[str], work: Path, decoder: Path | None = None) -> list[str]:
    names = {"dir": work, "decoder": decoder, "out": work / "new_output", "model": work / "model",
             "groups": work / "groups.jsonl", "corpus": work / "corpus.jsonl", "queries": work / "queries.jsonl",
             "qrels": work / "qrels.tsv", "run": work / "run.trec", "scores": work / "scores.tsv",
             "ints": work / "ints.tsv", "outdir": work / "outdir", "afile": work / "afile", "mine": work / "mine"}
    return [arg.format(**names) for arg in argv]


@pytest.mark.parametrize("command, argv, message", TABLE, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(TABLE)])
def test_every_user_mistake_is_one_line_exit_2_and_writes_nothing(work, capsys, monkeypatch, request, command, argv,
                                                                  message):
    """… found before any process group starts and before any weights load."""
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node1")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "1")
    monkeypatch.setattr(distributed, "init", _refused("a process group started"))
    monkeypatch.setattr(model_loader, "load_weights", _refused("weights loaded"))
    decoder = request.getfixturevalue("decoder") if any("{decoder}" in arg for arg in argv) else None
    capsys.readouterr()
    before = _files(work)
    assert run_cli([command, *_fill(argv, work, decoder)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bigrerank {command}") and ": error: " in lines[0], lines[0]
    assert message in lines[0], lines[0]
    assert _files(work) == before


def _refused(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} before the mistake was found")
    return refuse


def test_launch_train_py_ends_a_bad_value_as_one_line(work):
    for flags, message in ((["--loss", "foo"], "invalid choice: 'foo'"),
                           (["--temperature", "0"], "--temperature must be above 0")):
        proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *_fill(TRAIN, work), *flags],
                              capture_output=True, text=True, cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr
        assert proc.stderr.startswith("bigrerank train: error: ")


# ---------------------------------------------------------------- an edited scoring contract

CONTRACT_EDITS = [  # (edit of the saved contract, what the one line says)
    (lambda c: "garbage", "a scoring contract is a JSON object"),
    (lambda c: {**c, "score_head": "bogus"}, "field 'score_head': 'bogus' is no score head (classifier or yes_no)"),
    (lambda c: {**c, "template": "garbage"}, "a template is a JSON object"),
    (lambda c: {**c, "template": None}, "field 'template': the yes_no head needs a prompt template"),
    (lambda c: {**c, "template": {k: v for k, v in c["template"].items() if k != "yes"}}, "yes: a string is required"),
    (lambda c: {**c, "template": {**c["template"], "text": "no slots"}}, "needs exactly one {query} slot, found 0"),
    (lambda c: {**c, "template": {**c["template"], "yes": "no"}}, "yes 'no' and no 'no' are the same token"),
    (lambda c: {**c, "instruction": 5}, "field 'instruction': must be a string or null, got 5"),
    (lambda c: {**c, "max_len": "abc"}, "field 'max_len': must be a positive integer or null, got 'abc'"),
    (lambda c: {**c, "padding_side": "left"}, "field 'padding_side': must be 'right'"),
    (lambda c: {**c, "pad_token_id": "x"}, "field 'pad_token_id': must be a token id or null, got 'x'"),
    (lambda c: {**c, "extra": 1}, "unknown field(s) extra"),
]


@pytest.mark.parametrize("edit, message", CONTRACT_EDITS, ids=[m[:24] for _, m in CONTRACT_EDITS])
def test_an_edited_scoring_contract_is_named_field_by_field(work, decoder, capsys, monkeypatch, edit, message):
    monkeypatch.setattr(model_loader, "load_weights", _refused("weights loaded"))
    model_dir = work / "scored"
    shutil.copytree(decoder, model_dir)
    config = model_loader.load_config(model_dir)
    saved = resolve_contract(str(model_dir), config, model_loader.load_tokenizer(model_dir, config), "yes_no")
    (model_dir / CONTRACT_FILE).write_text(json.dumps(edit(json.loads(saved.to_json()))))
    argv = ["rerank", *_fill(DECODER_RERANK, work, model_dir)]
    capsys.readouterr()
    assert run_cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bigrerank rerank: error: "), lines
    assert message in lines[0], lines[0]


# ---------------------------------------------------------------- consolidate's target directory

def test_consolidate_replaces_only_a_previous_export(tmp_path):
    check_export_dir(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_export_dir(tmp_path / "empty")
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / TRAINING_INFO).write_text("{}")
    (export / "model.safetensors").write_bytes(b"old")
    check_export_dir(export)
    (export / TRAINING_INFO).unlink()  # config.json alone: someone else's model
    with pytest.raises(InputError, match="holds no previous export"):
        check_export_dir(export)


# ---------------------------------------------------------------- runs: one reader, by score

def test_trec_runs_are_ranked_by_score_not_by_their_rank_column(tmp_path, capsys):
    trec = tmp_path / "run.trec"
    # ranks say d1 d2 d3 d4; scores say d3, then d2 and d4 tied (d2 first: document id), then d1
    trec.write_text("q1 Q0 d1 1 0.1 r\nq1 Q0 d2 2 0.5 r\nq1 Q0 d3 3 0.9 r\nq1 Q0 d4 4 0.5 r\n")
    assert [d for d, _ in read_run(trec)["q1"]] == ["d3", "d2", "d4", "d1"]
    (tmp_path / "qrels.tsv").write_text("q1 0 d3 1\n")
    out = tmp_path / "m.json"
    assert cli.main(["eval", "--qrels", str(tmp_path / "qrels.tsv"), "--run", str(trec), "--output", str(out),
                     "--metrics", "RR@10"]) == 0
    assert json.loads(out.read_text()) == {"RR@10": 1.0}
    assert f"{trec}: read as a TREC run" in capsys.readouterr().err
    assert cli.main(["convert", str(trec), "--to", "marco", "--output", str(tmp_path / "run.marco")]) == 0
    assert (tmp_path / "run.marco").read_text() == "q1\td3\t1\nq1\td2\t2\nq1\td4\t3\nq1\td1\t4\n"


def test_integer_scores_are_not_taken_for_ranks_and_eval_and_convert_read_alike(tmp_path, capsys):
    scores = tmp_path / "ints.tsv"
    scores.write_text("q1\td1\t1\nq1\td2\t7\nq1\td3\t3\n")  # integer scores: d2 best
    with pytest.raises(InputError, match="ambiguous run.*--run_format"):
        read_run(scores)
    assert [d for d, _ in read_run(scores, "scores")["q1"]] == ["d2", "d3", "d1"]
    (tmp_path / "qrels.tsv").write_text("q1 0 d2 1\n")
    qrels, metrics = str(tmp_path / "qrels.tsv"), ["--metrics", "RR@10", "nDCG@10"]
    assert cli.main(["convert", str(scores), "--to", "trec", "--output", str(tmp_path / "c.trec"),
                     "--run_format", "scores"]) == 0
    assert cli.main(["eval", "--qrels", qrels, "--run", str(scores), "--run_format", "scores",
                     "--output", str(tmp_path / "a.json"), *metrics]) == 0
    assert cli.main(["eval", "--qrels", qrels, "--run", str(tmp_path / "c.trec"), "--output", str(tmp_path / "b.json"),
                     *metrics]) == 0
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert a == b and a["RR@10"] == 1.0
    err = capsys.readouterr().err
    assert f"{scores}: read as a score file (qid docid score) (--run_format)" in err
    assert f"{tmp_path / 'c.trec'}: read as a TREC run" in err and "(detected)" in err


def test_train_asks_for_its_own_format_flag_when_the_eval_run_is_ambiguous(work, tmp_path_factory, capsys):
    model = tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    eval_run = ["--eval_run", str(work / "ints.tsv"), "--eval_queries", str(work / "queries.jsonl"),
                "--eval_corpus", str(work / "corpus.jsonl"), "--eval_qrels", str(work / "qrels.tsv")]
    argv = ["train", "--model_name_or_path", str(model), "--train_path", str(work / "groups.jsonl"),
            "--output_dir", str(work / "new_output"), "--max_len", "32", *eval_run]
    capsys.readouterr()
    before = _files(work)
    assert run_cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bigrerank train: error: "), lines
    assert f"{work / 'ints.tsv'}" in lines[0] and "ambiguous run" in lines[0]
    assert "pass --eval_run_format marco or --eval_run_format scores" in lines[0], lines[0]
    assert _files(work) == before
    # the flag settles it: read as integer scores (q1: d1 at 5 above d2 at 3), and said so on stderr
    args = parse_train_args(argv[1:] + ["--eval_run_format", "scores"])[2]
    eval_set = read_eval_set(args, vocab_size=100)
    assert [(c.qid, c.pid) for c in eval_set.candidates] == [("q1", "d1"), ("q1", "d2"), ("q2", "d3")]
    assert f"{work / 'ints.tsv'}: read as a score file (qid docid score) (--eval_run_format)" in capsys.readouterr().err
    args = parse_train_args(argv[1:] + ["--eval_run_format", "marco"])[2]  # as ranks: d2 (rank 3) before d1 (5)
    assert [(c.qid, c.pid) for c in read_eval_set(args, vocab_size=100).candidates][:2] == [("q1", "d2"), ("q1", "d1")]


# ---------------------------------------------------------------- rerank at the model's training length

@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """A model directory whose training record says it was trained at max_len 12."""
    model = spread_model_dir(tmp_path_factory.mktemp("model"))
    (model / TRAINING_INFO).write_text(json.dumps({"max_len": 12, "loss": "lce"}))
    return model


def test_rerank_scores_at_the_training_length_by_default_and_says_when_not(trained_like, tmp_path, capsys):
    write_beir(tmp_path, {"d1": ("", "new york is cold today and every day of the year in the long winter"),
                          "d2": ("python", "code of python is new and old and written in many long lines")},
               {"q1": "weather in new york"})
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 2.0 r\nq1 Q0 d2 2 1.0 r\n")
    common = ["rerank", "--model", str(trained_like), "--run", str(tmp_path / "run.trec"),
              "--queries", str(tmp_path / "queries.jsonl"), "--corpus", str(tmp_path / "corpus.jsonl")]

    def scores(*flags):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.tsv"
        assert cli.main([*common, "--output", str(out), *flags]) == 0
        return [line.split("\t")[2] for line in out.read_text().splitlines()], capsys.readouterr().err

    default, said = scores()
    assert "max_len 12, the length the model was trained at" in said
    assert scores("--max_len", "12")[0] == default
    longer, said = scores("--max_len", "64")
    assert longer != default and "not at the model's training length 12" in said
    (trained_like / TRAINING_INFO).unlink()  # another model: today's default (its limit, at most 512), said nothing
    other, said = scores()
    assert other == longer and "max_len" not in said


# ---------------------------------------------------------------- training data: cache and element names

def test_the_data_cache_follows_content_not_size_and_mtime(tmp_path):
    path = tmp_path / "g.jsonl"
    line = '{"qry": {"qid": "q1", "query": "aaaa"}, "pos": [{"pid": "p", "passage": "c"}], "neg": [{"pid": "n", "passage": "d"}]}\n'
    path.write_text(line)
    stat = path.stat()
    assert load_groups(path, group_size=2, cache_dir=str(tmp_path / "cache"))[0]["query"] == "aaaa"
    path.write_text(line.replace("aaaa", "bbbb"))  # same size; the mtime put back, as `cp -p` or `rsync -t` do
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_groups(path, group_size=2, cache_dir=str(tmp_path / "cache"))[0]["query"] == "bbbb"


@pytest.mark.parametrize("neg, where", [([{"pid": "n", "passage": "d"}, {"pid": "m", "passage": ""}], "neg[1].passage"),
                                        ([{"pid": "", "passage": "d"}], "neg[0].pid")])
def test_data_errors_name_the_element(tmp_path, neg, where):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"qry": {"qid": "q", "query": "a"}, "pos": [{"pid": "p", "passage": "c"}], "neg": neg}))
    with pytest.raises(InputError, match=re.escape(f"g.jsonl:1: field '{where}'")):
        load_groups(path, group_size=2, cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------- help

HELP = {"train": [], "retrieve": [], "prepare": ["train"], "consolidate": [], "rerank": [], "convert": [], "eval": [],
        "hostfile": [], "demo": []}


@pytest.mark.parametrize("command", sorted(HELP))
def test_help_names_the_subcommand_and_shows_every_default_and_choice(command, capsys):
    assert run_cli([command, *HELP[command], "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: bigrerank {' '.join([command, *HELP[command]])} ")
    options = text[text.index("options:"):]
    entries = [e for e in options.split("\n  -")[1:] if not e.startswith("h, --help")]
    assert entries
    for entry in map(" ".join, map(str.split, entries)):
        assert "(default: " in entry or entry.endswith("(required)"), entry
    if command == "train":
        assert "{lce,distill,bce}" in options and "{wandb,none}" in options
    if command == "consolidate":  # as the README writes it
        assert text.startswith("usage: bigrerank consolidate CHECKPOINT OUTPUT [--tag TAG]")
        assert "bigrerank consolidate out/checkpoints out/model [--tag step-500]" in (REPO / "README.md").read_text()


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"bigrerank {__version__}\n"


def test_the_default_ds_config_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ds_config.load("ds_configs/zero2.json") == json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    assert ds_config.locate("zero3.json") == ds_config.PACKAGED_CONFIGS / "zero3.json"
    assert sorted(p.name for p in ds_config.PACKAGED_CONFIGS.glob("*.json")) == \
        sorted(p.name for p in (REPO / "ds_configs").glob("*.json"))
    with pytest.raises(InputError, match="DeepSpeed config not found"):
        ds_config.load("elsewhere/zero2.json")


def test_the_configs_are_package_data():
    setup = (REPO / "setup.py").read_text()
    assert '"bigrerank": ["ds_configs/*.json"]' in setup
    assert (REPO / "ds_configs").resolve() == ds_config.PACKAGED_CONFIGS  # the README's paths still work
