"""Padding-free packed pairs: packing itself, packed scores equal padded ones, the start-up self-check, and the
exactness matrix with packing on (and with token-budget gradient-cache chunks) against the plain reference."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
import transformers.masking_utils
from safetensors.torch import load_file

from bigrerank import cli
from bigrerank.contract import make_encoder, resolve_contract
from bigrerank.data.packing import first_fit_decreasing, pack
from bigrerank.errors import InputError
from bigrerank.inference.reranker import RerankerForInference
from bigrerank.model import check_packing, load_config, load_reranker, load_tokenizer, pair_scores
from bigrerank.training.evaluation import metric_names
from bigrerank.training.shard import token_chunks
from tests.dist_harness import run_jobs
from tests.reference import assert_gradients_close, assert_weights_close, reference_state
from tests.tiny import tiny_model_dir, write_eval_set, write_groups
from tests.tiny_decoder import tiny_decoder_dir
from tests.tiny_decoder_reranker import tiny_decoder_reranker_dir

QUERIES = ["what is python", "weather in new york", "cold", "0123 what code", "the new code",
           "what is the weather in new york today and is it cold or is it not cold"]
PASSAGES = ["python code is what it is", "it is cold today in new york, the weather says",
            "abcdefghijklmnopqrstuvwxyz", "today", "new",
            "the weather in new york is cold today " * 8]  # cut at max_len
MAX_LEN = {"classifier": 48, "yes_no": 160}  # the prompt template takes 111 tokens of its own


def test_first_fit_decreasing_fills_rows_longest_first():
    assert first_fit_decreasing([5, 3, 8, 2, 4], 10) == [[2, 3], [0, 4], [1]]
    assert first_fit_decreasing([12, 1], 10) == [[0], [1]]  # an item over the capacity gets a row alone


def test_pack_places_every_pair_with_restarting_positions():
    pairs = [([7, 8, 9], [0, 0, 1]), ([4, 5], [0, 1]), ([1, 2, 3, 4], [0, 0, 1, 1])]
    batch = pack(pairs, pack_len=6, pad_id=0, use_token_types=True)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 4, 5], [7, 8, 9, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]  # the tail: a segment too
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0]]
    flat_ids, flat_types = batch["input_ids"].flatten(), batch["token_type_ids"].flatten()
    for (ids, types), start, length in zip(pairs, batch["pair_starts"], batch["pair_lengths"]):
        assert flat_ids[start:start + length].tolist() == ids and flat_types[start:start + length].tolist() == types
    assert "attention_mask" not in batch


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packing")
    dirs = {"bert": tiny_model_dir(tmp / "bert", init_range=0.2)}
    for arch in ("qwen3", "llama"):
        dirs[f"{arch}-classifier"] = tiny_decoder_reranker_dir(tmp / f"{arch}-classifier", arch)
        dirs[f"{arch}-yes_no"] = tiny_decoder_dir(tmp / f"{arch}-yes_no", arch, init_range=0.2)
    return dirs


def _model_and_encoder(model_dir, head=None, factor=None):
    """The model (eval mode) and its pair encoder, packing into rows of `factor` x max_len when given."""
    model_dir, max_len = str(model_dir), MAX_LEN[head or "classifier"]
    config = load_config(model_dir)
    tokenizer = load_tokenizer(model_dir, config)
    contract = resolve_contract(model_dir, config, tokenizer, head, max_len=max_len)
    encoder = make_encoder(tokenizer, max_len, contract, factor and factor * max_len)
    torch.manual_seed(0)
    return load_reranker(model_dir, contract=contract).eval(), encoder


CASES = [("bert", None), ("qwen3-classifier", "classifier"), ("llama-classifier", "classifier"),
         ("qwen3-yes_no", "yes_no"), ("llama-yes_no", "yes_no")]


@pytest.mark.parametrize("name,head", CASES)
@pytest.mark.parametrize("factor", [2, 4])
def test_packed_scores_equal_padded(models, name, head, factor):
    """fp32, mixed lengths, one pair cut at max_len: every pair's packed score within 1e-5 of its padded one, for
    rows of two and four pairs' room."""
    model, encoder = _model_and_encoder(models[name], head, factor)
    pairs = encoder.encode_texts(QUERIES, PASSAGES)
    assert max(len(ids) for ids, _ in pairs) == encoder.max_len and len({len(ids) for ids, _ in pairs}) == len(pairs)
    packed_batch = encoder.collate(pairs)
    assert packed_batch["input_ids"].shape[0] < len(pairs)  # pairs share rows
    with torch.no_grad():
        padded = pair_scores(model, encoder.pad(pairs))
        packed = pair_scores(model, packed_batch)
    assert torch.allclose(packed, padded, atol=1e-5, rtol=0), (packed, padded)
    assert padded.std() > 1e-3  # the pairs are told apart


@pytest.mark.parametrize("name,head", [("bert", None), ("qwen3-classifier", "classifier"), ("llama-yes_no", "yes_no")])
def test_packed_gradients_equal_padded(models, name, head):
    model, encoder = _model_and_encoder(models[name], head, 2)
    pairs = encoder.encode_texts(QUERIES, PASSAGES)
    weights = torch.linspace(-1.0, 1.0, len(pairs))

    def gradients(batch):
        model.zero_grad()
        (pair_scores(model, batch) * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded, packed = gradients(encoder.pad(pairs)), gradients(encoder.collate(pairs))
    assert set(padded) == set(packed)
    total = torch.sqrt(sum(g.norm() ** 2 for g in padded.values()))
    error = torch.sqrt(sum((packed[n] - padded[n]).norm() ** 2 for n in padded))
    assert error / total < 1e-5, (error / total)


@pytest.mark.parametrize("name,head", CASES)
def test_self_check_passes_where_attention_keeps_pairs_apart(models, name, head):
    model, encoder = _model_and_encoder(models[name], head)
    check_packing(model, encoder, "cpu", "model")
    assert not model.training


def test_self_check_refuses_attention_that_ignores_packed_positions(models, monkeypatch):
    """An attention that sees the whole row (here: transformers' packed-sequence detection switched off) mixes the
    pairs of a row: refused with the model named."""
    model, encoder = _model_and_encoder(models["bert"])
    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(InputError, match=r"^model: --padding_free: 'bert' scores pairs packed in one row "
                                         r"differently from each alone"):
        check_packing(model, encoder, "cpu", "model")


STEPS, GROUP, PER_RANK = 3, 5, 2


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """The exactness matrix's model and data (tests/test_exactness.py): group 5, 16 queries, pairs of mixed lengths."""
    tmp = tmp_path_factory.mktemp("packed-exact")
    return tmp, tiny_model_dir(tmp / "model", init_range=0.2), write_groups(tmp / "groups.jsonl", queries=16,
                                                                            negatives=6)


def _train_argv(model, data, out, stage: int, chunking: list[str], collaborative: bool, packing: list[str]):
    return ["--model_name_or_path", str(model), "--train_path", str(data), "--train_group_size", str(GROUP),
            "--max_len", "32", "--learning_rate", "1e-3", "--max_steps", str(STEPS), "--logging_steps", "1",
            "--save_steps", "1000", "--per_device_train_batch_size", str(PER_RANK), "--output_dir", str(out),
            "--ds_config", f"ds_configs/zero{stage}.json", *chunking, *packing,
            *(["--collaborative"] if collaborative else [])]


def _assert_matches_reference(run, model, data, queries: int):
    weights, gradients = reference_state(model, data, steps=STEPS, queries_per_micro=queries, accum=1,
                                         group_size=GROUP, lr=1e-3)
    for step in range(STEPS):
        recorded = torch.load(run / "grads" / f"step-{step + 1}.pt")["grads"]
        assert_gradients_close(recorded, gradients[step], (run.name, step + 1))
    assert_weights_close(load_file(str(run / "model.safetensors")), weights, run.name, gradients)


# (name, chunking flags): plain, cached by a pair count (K=4 divides neither 10 local nor 6 collaborative pairs),
# cached by a token budget (about two to four pairs of this data a chunk, so the ranks' chunk counts differ)
CHUNKING = {"plain": [], "cached": ["--grad_cache_chunk_size", "4"], "tokens": ["--grad_cache_max_tokens", "40"]}


@pytest.mark.slow
def test_packed_matrix_matches_the_plain_reference(exact):
    """--padding_free (the default rows of max_len) on 2 ranks: {plain, cached K=4, cached 40 tokens} x {local,
    collaborative} x ZeRO {0, 3}, gradients of every step and final weights against the plain padded
    single-process reference, at tests/reference.py's tolerances."""
    tmp, model, data = exact
    modes = list(itertools.product((0, 3), CHUNKING, (False, True)))
    runs = {mode: tmp / "w2" / f"zero{mode[0]}-{mode[1]}-{'collab' if mode[2] else 'local'}" for mode in modes}
    run_jobs(2, [(_train_argv(model, data, out, stage, CHUNKING[chunking], collab, ["--padding_free"]),
                  str(out / "grads")) for (stage, chunking, collab), out in runs.items()])
    for (stage, chunking, collab), run in runs.items():
        _assert_matches_reference(run, model, data, PER_RANK if collab else 2 * PER_RANK)


def test_token_budget_chunks_match_the_plain_reference_on_one_rank(exact):
    """One rank, ZeRO-2, padded and packed: chunks of at most 40 tokens (pairs grouped by length) give the plain
    reference's gradients and weights."""
    tmp, model, data = exact
    runs = {packing: tmp / "w1" / f"tokens-{packing or 'padded'}" for packing in ("", "--padding_free")}
    run_jobs(1, [(_train_argv(model, data, out, 2, CHUNKING["tokens"], False, [packing] if packing else []),
                  str(out / "grads")) for packing, out in runs.items()])
    for run in runs.values():
        _assert_matches_reference(run, model, data, PER_RANK)


def test_token_chunks_group_by_length_within_the_budget():
    lengths = [5, 30, 12, 28, 7, 31]
    order, bounds = token_chunks(lengths, 40)
    assert order == [5, 1, 3, 2, 4, 0]  # longest first
    assert bounds == [(0, 1), (1, 2), (2, 4), (4, 6)]
    assert all(sum(lengths[i] for i in order[a:b]) <= 40 for a, b in bounds)
    assert token_chunks([50, 3], 40)[1] == [(0, 1), (1, 2)]  # a pair over the budget: a chunk alone


def test_token_chunks_reach_the_count_every_rank_agrees_on():
    """A rank with fewer chunks than another halves its fullest ones, so every rank runs as many forwards."""
    lengths = [5, 30, 12, 28, 7, 31]
    order, bounds = token_chunks(lengths, 40, agree=lambda count: 6)
    assert sorted(order) == list(range(6)) and len(bounds) == 6
    assert [b - a for a, b in bounds] == [1] * 6


@pytest.mark.parametrize("argv,message", [
    (["--pack_len", "64"], "--pack_len: needs --padding_free"),
    (["--padding_free", "--pack_len", "16"], "--pack_len must be at least --max_len (32), got 16"),
    (["--grad_cache_max_tokens", "16"], "--grad_cache_max_tokens must be at least --max_len (32)"),
    (["--grad_cache_max_tokens", "64", "--grad_cache_chunk_size", "4"],
     "--grad_cache_chunk_size and --grad_cache_max_tokens exclude each other"),
])
def test_packing_flags_are_checked_before_any_work(tmp_path, capsys, argv, message):
    """One line, exit 2, before the model (here: a directory without one) is opened."""
    argv = ["train", "--model_name_or_path", str(tmp_path / "none"), "--train_path", str(tmp_path / "none.jsonl"),
            "--output_dir", str(tmp_path / "out"), "--max_len", "32", *argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bigrerank train: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,head", [("bert", None), ("llama-classifier", "classifier"), ("qwen3-yes_no", "yes_no")])
def test_padding_free_reranker_scores_like_the_padded_one(models, name, head):
    """RerankerForInference(padding_free=True): the self-check passes and every score is the padded one's."""
    options = dict(max_len=MAX_LEN[head or "classifier"], device="cpu", score_head=head)
    padded = RerankerForInference.from_pretrained(models[name], **options)
    packed = RerankerForInference.from_pretrained(models[name], padding_free=True, **options)
    assert packed.encoder().pack_len == packed.max_len  # the default row: one pair length
    expected = padded.score(QUERIES, PASSAGES, batch_size=4)
    assert packed.score(QUERIES, PASSAGES, batch_size=4) == pytest.approx(expected, abs=1e-5)
    assert "pair_starts" not in packed.tokenize(QUERIES, PASSAGES, return_tensors="pt")  # the model's own inputs


def test_rerank_padding_free_writes_the_padded_scores(models, tmp_path):
    rows = [{"qid": f"q{i}", "pid": f"p{i}", "qry": q, "psg": p} for i, (q, p) in enumerate(zip(QUERIES, PASSAGES))]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["rerank", "--model", str(models["bert"]), "--input", str(pairs), "--max_len", "48", "--batch_size", "4"]
    assert cli.main([*common, "--output", str(tmp_path / "padded.tsv")]) == 0
    assert cli.main([*common, "--output", str(tmp_path / "packed.tsv"), "--padding_free", "--pack_len", "100"]) == 0

    def scores(name):
        return [float(line.split("\t")[2]) for line in (tmp_path / name).read_text().splitlines()]

    assert scores("packed.tsv") == pytest.approx(scores("padded.tsv"), abs=1e-5)
    assert cli.main([*common, "--output", str(tmp_path / "x.tsv"), "--pack_len", "100"]) == 2
    assert not (tmp_path / "x.tsv").exists()


def _eval_rows(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{m: row[f"eval_{m}"] for m in metric_names("nDCG@10")} for row in rows if "eval_nDCG@10" in row]


def _assert_same_training(padded, packed, steps: int):
    """Each step's reduced gradients of the packed run equal the padded run's, at the exactness tolerances, and
    the evaluations while training agree."""
    for step in range(steps):
        reference = torch.load(padded / "grads" / f"step-{step + 1}.pt")["grads"]
        assert_gradients_close(torch.load(packed / "grads" / f"step-{step + 1}.pt")["grads"], reference,
                               (packed.name, step + 1))
    evals, expected = _eval_rows(packed), _eval_rows(padded)
    assert evals and len(evals) == len(expected)
    for got, want in zip(evals, expected):
        assert got == pytest.approx(want, abs=1e-6), (packed.name, got, want)


@pytest.mark.slow
def test_packing_with_lora_checkpointing_and_evaluation_trains_as_padded(tmp_path):
    """LoRA, gradient checkpointing and evaluation while training, packed vs padded: a BERT classifier on 2 ranks
    (ZeRO-3, collaborative, token-budget chunks) and a Qwen3 yes_no decoder on 1 rank (ZeRO-2, chunks of 3)."""

    bert, qwen3 = tiny_model_dir(tmp_path / "bert", init_range=0.2), tiny_decoder_dir(tmp_path / "qwen3", "qwen3",
                                                                                       init_range=0.2)
    train, files = write_groups(tmp_path / "groups.jsonl", queries=16), write_eval_set(tmp_path / "eval")
    common = ["--train_path", str(train), "--train_group_size", "4", "--per_device_train_batch_size", "2",
              "--learning_rate", "1e-2", "--max_steps", "4", "--logging_steps", "1", "--save_steps", "1000",
              "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--gradient_checkpointing",
              "--eval_path", str(files["pairs"]), "--eval_ids", str(files["ids"]), "--eval_qrels",
              str(files["qrels"]), "--eval_steps", "2", "--per_device_eval_batch_size", "5"]
    setups = {"bert": (2, ["--model_name_or_path", str(bert), "--ds_config", "ds_configs/zero3.json", "--max_len",
                           "32", "--collaborative", "--grad_cache_max_tokens", "64"]),
              "qwen3": (1, ["--model_name_or_path", str(qwen3), "--ds_config", "ds_configs/zero2.json", "--max_len",
                            "192", "--score_head", "yes_no", "--grad_cache_chunk_size", "3"])}
    for name, (world, flags) in setups.items():
        runs = {packing: tmp_path / f"{name}-{packing or 'padded'}" for packing in ("", "--padding_free")}
        run_jobs(world, [([*common, *flags, "--output_dir", str(out), *([packing] if packing else [])],
                          str(out / "grads")) for packing, out in runs.items()])
        _assert_same_training(runs[""], runs["--padding_free"], 4)
