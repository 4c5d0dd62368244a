"""ZeRO checkpoints consolidate into Hugging Face directories that score exactly like the live engine."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from bigrerank import cli, distributed
from bigrerank.checkpoints.consolidate import consolidate
from bigrerank.errors import InputError
from tests.dist_harness import run_ranks
from tests.helpers import train_argv
from tests.tiny import tiny_model_dir, write_groups

PAIRS = [("weather in new york", "it is cold today in new york"), ("python code", "the code of python is new")]


def _train_and_score(argv: list[str], logits_file: str):
    from bigrerank import distributed
    from bigrerank.commands.train import parse
    from bigrerank.training import trainer

    engine = trainer.train(*parse(argv)).engine
    tokenizer = AutoTokenizer.from_pretrained(argv[argv.index("--model_name_or_path") + 1])
    batch = tokenizer([q for q, _ in PAIRS], [p for _, p in PAIRS], padding=True, return_tensors="pt")
    engine.eval()
    with torch.no_grad():  # every rank: ZeRO-3 gathers the partitioned weights in the forward
        logits = engine(**batch).logits.float()
    if distributed.is_main():
        torch.save(logits, logits_file)


def _train_and_score_each(jobs: list[tuple[list[str], str]]):
    for argv, logits_file in jobs:
        _train_and_score(argv, logits_file)


CASES = [(1, False), (2, False), (3, False), (3, True), ("2_offload", False)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, {(stage, bf16): run dir}): every case trained on the same two ranks (one start, not one per case),
    each run dir holding the run's `out/` and the live engine's logits `live.pt`."""
    tmp = tmp_path_factory.mktemp("consolidate")
    model = tiny_model_dir(tmp / "model", init_range=0.2)
    train = write_groups(tmp / "g.jsonl", queries=16)
    runs = {(stage, bf16): tmp / f"zero{stage}-{'bf16' if bf16 else 'fp32'}" for stage, bf16 in CASES}
    jobs = [(train_argv(model, train, run / "out", f"zero{stage}", learning_rate="1e-2", max_steps=4, save_steps=2,
                        bf16=bf16, logging_steps=None), str(run / "live.pt")) for (stage, bf16), run in runs.items()]
    run_ranks(2, _train_and_score_each, jobs)
    return model, runs


@pytest.mark.slow
@pytest.mark.parametrize("stage,bf16", CASES)
def test_consolidated_model_scores_like_the_live_engine(trained, tmp_path, stage, bf16):
    model, runs = trained
    out = runs[(stage, bf16)] / "out"
    live = torch.load(runs[(stage, bf16)] / "live.pt")

    exported = tmp_path / "from_step2"
    assert cli.main(["consolidate", str(out / "checkpoints"), str(exported), "--tag", "step-2"]) == 0
    for directory in (out, exported):  # the end-of-run export and the consolidate command: one code path
        assert AutoConfig.from_pretrained(directory).num_labels == 1
        assert (directory / "model.safetensors").is_file() and (directory / "README.md").is_file()
        assert AutoTokenizer.from_pretrained(directory).vocab_size == AutoTokenizer.from_pretrained(model).vocab_size

    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = hf(**tokenizer([q for q, _ in PAIRS], [p for _, p in PAIRS], padding=True,
                                return_tensors="pt")).logits.float()
    if bf16:  # both compute in bf16: the export holds the fp32 masters rounded to bf16, scored in another process
        assert hf.dtype == torch.bfloat16
        assert torch.allclose(logits, live, atol=3e-2, rtol=2e-2), (logits, live)
    else:  # the same fp32 weights, scored in another process: equal up to one float32 rounding step
        assert torch.allclose(logits, live, atol=1e-6, rtol=0), (logits, live)
    step2 = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    assert not torch.equal(step2.classifier.weight, hf.classifier.weight)  # --tag picked the earlier step


def test_keep_causal_lm_is_refused_for_a_classifier_checkpoint(trained, tmp_path, capsys):
    out = trained[1][(1, False)] / "out"
    assert cli.main(["consolidate", str(out / "checkpoints"), str(tmp_path / "kept"), "--keep_causal_lm"]) == 2
    assert capsys.readouterr().err.strip().endswith("--keep_causal_lm: keeps a yes_no model a causal LM; this model's "
                                                    "score head is classifier")
    assert not (tmp_path / "kept").exists()


def test_consolidate_refuses_incomplete_checkpoints(tmp_path):
    (tmp_path / "ckpt" / "step-5").mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("step-5")
    with pytest.raises(InputError, match="step-5: checkpoint is not complete: no COMPLETE marker"):
        consolidate(tmp_path / "ckpt", tmp_path / "out")
    with pytest.raises(InputError, match="no 'latest' file and no --tag"):
        consolidate(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _train_and_save_masters(argv: list[str], masters_file: str):
    from bigrerank.commands.train import parse
    from bigrerank.training import trainer

    engine = trainer.train(*parse(argv)).engine
    names = {id(param): name for name, param in engine.module.named_parameters()}
    optimizer = engine.optimizer  # DeepSpeed's mixed-precision wrapper: bf16 module weights, fp32 masters
    torch.save({names[id(low)]: master.detach().clone()
                for lows, masters in zip(optimizer.fp16_groups, optimizer.fp32_groups)
                for low, master in zip(lows, masters)}, masters_file)


def _zero0_argv(tmp_path, *extra: str) -> list[str]:
    """A tiny ZeRO-0 training command line into tmp_path/out (model and data written there)."""
    model = tiny_model_dir(tmp_path / "model", init_range=0.2)
    train = write_groups(tmp_path / "g.jsonl", queries=16)
    return train_argv(model, train, tmp_path / "out", "zero0", *extra)


def test_zero0_bf16_exports_the_optimizers_fp32_master_weights(tmp_path):
    """The end-of-run export keeps the trained dtype (bf16, rounded from the masters); --export_dtype fp32 writes
    the masters themselves."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    argv = _zero0_argv(tmp_path, "--learning_rate", "1e-3", "--max_steps", "3", "--bf16")
    try:
        _train_and_save_masters(argv, str(tmp_path / "masters.pt"))
    finally:
        distributed.teardown(wait_for_others=False)
    masters = torch.load(tmp_path / "masters.pt")
    in_bf16 = load_file(str(out / "model.safetensors"))
    assert masters and all(in_bf16[name].dtype == torch.bfloat16 for name in masters)
    assert AutoConfig.from_pretrained(out).dtype == torch.bfloat16
    assert cli.main(["consolidate", str(out / "checkpoints"), str(tmp_path / "fp32"), "--export_dtype", "fp32"]) == 0
    exported = load_file(str(tmp_path / "fp32" / "model.safetensors"))
    assert all(exported[name].dtype == torch.float32 for name in masters)
    for name, master in masters.items():
        assert torch.equal(exported[name], master), name
        assert torch.equal(in_bf16[name], master.bfloat16()), name
    assert any(not torch.equal(m, m.bfloat16().float()) for m in masters.values())  # not bf16 values upcast


def test_exported_files_follow_the_umask(tmp_path):
    import os

    out = tmp_path / "out"
    argv = _zero0_argv(tmp_path, "--max_steps", "1")
    previous = os.umask(0o027)
    try:
        assert cli.main(["train", *argv]) == 0
    finally:
        os.umask(previous)
        distributed.teardown(wait_for_others=False)
    modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir() if path.is_file()}
    assert modes["model.safetensors"] == 0o640 and set(modes.values()) == {0o640}, modes
