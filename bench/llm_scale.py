"""Decoder LLM rerankers at real scale on CPU: a full fine-tune of a ~0.5B model, LoRA on a ~3B one, and the cost
of gradient checkpointing. Nothing is downloaded: each model is the real architecture's config (dimensions,
vocabulary, tied embeddings) with random weights, written here with a local tokenizer; training data are random
token-id groups whose pairs fill max_len.

    python bench/llm_scale.py full [--arch qwen2.5-0.5b] [--steps 3]   # (a) ZeRO-3 + CPU offload, 2 ranks
    python bench/llm_scale.py lora [--arch qwen2.5-3b] [--steps 2]     # (b) the same with LoRA r16
    python bench/llm_scale.py ckpt                                     # checkpointing: time cost, memory saved
    python bench/llm_scale.py full --arch tiny --steps 2               # smoke test of the bench itself
    python bench/llm_scale.py write --arch qwen2.5-0.5b --work DIR      # only write DIR/<arch> and DIR/data-16.jsonl

(a)/(b) set-up: 2 ranks (torchrun, gloo, 1 thread each), ds_configs/zero3_offload.json, bf16, gradient
checkpointing, group 16, collaborative, gradient cache chunk 4, max_len 128, 1 query a step. Reported: peak RSS
per rank (during the steps, and overall including the rank-0 export), s/step and tokens/s (steps 2..N), the
consolidated export's scores next to the live engine's (the export loads with AutoModelForSequenceClassification),
and for (a) a plain PyTorch loop of the same model and step (fp32 weights, bf16 autocast, checkpointing, the
same gradient-cache step by hand, torch AdamW, one process with as many threads as the ranks have): tokens/s ratio (target >= 0.9) and
MFU = (6 x non-embedding parameters + 12 x layers x attention width x sequence length) x tokens/s / peak, the peak
being a bf16 torch.matmul on the same threads.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO))  # tests.tiny_decoder: the local tokenizer

VOCAB = 151936
# public config.json dimensions (../shared/MODELS.md); "tiny" smoke-tests the bench
ARCHS = {
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2)),
    "qwen3-0.6b": ("qwen3", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128)),
    "qwen2.5-1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                   num_attention_heads=12, num_key_value_heads=2)),
    "qwen2.5-3b": ("qwen2", dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                 num_attention_heads=16, num_key_value_heads=2)),
    "qwen2.5-0.5b-6l": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=6,
                                      num_attention_heads=14, num_key_value_heads=2)),
    "tiny": ("qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2)),
}
GROUP, CHUNK, MAX_LEN, RANKS = 16, 4, 128, 2


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_model(arch: str, directory: Path) -> Path:
    """The architecture's reranker (one-logit head) with random bf16 weights, and a local tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tests.tiny_decoder import tiny_decoder_tokenizer

    if (directory / "config.json").is_file():
        return directory
    tokenizer = tiny_decoder_tokenizer()
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    model_type, dims = ARCHS[arch]
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, tie_word_embeddings=True, num_labels=1,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, **dims)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_data(path: Path, tokenizer_dir: Path, queries: int) -> Path:
    """Random token-id groups: a 12-token query and passages that fill max_len (the pair template adds none)."""
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    low, high = max(tokenizer.all_special_ids) + 1, len(tokenizer)
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(low, high, size=n).tolist()  # noqa: E731
    with open(path, "w") as f:
        for q in range(queries):
            f.write(json.dumps({"qry": {"qid": f"q{q}", "query": ids(12)},
                                "pos": [{"pid": f"q{q}p", "passage": ids(MAX_LEN)}],
                                "neg": [{"pid": f"q{q}n{i}", "passage": ids(MAX_LEN)} for i in range(GROUP - 1)]})
                    + "\n")
    return path


def probe_batch(model_dir: Path) -> dict:
    """Four pairs of mixed lengths, padded: what the live engine and the export both score."""
    from transformers import AutoTokenizer

    from bigrerank.data.pairs import PairEncoder

    encoder = PairEncoder(AutoTokenizer.from_pretrained(model_dir), MAX_LEN)
    texts = [("weather in new york", "it is cold today in new york"), ("python code", "what is python code"),
             ("the query", "the weather in new york is cold today, what is python"), ("a", "b")]
    return encoder.collate([encoder.encode_ids(*encoder.token_ids([q, p])) for q, p in texts])


def rank_main(argv: list[str], result_dir: str) -> None:
    """One torchrun rank: train, score the probe with the live engine, record peak RSS."""
    import torch

    from bigrerank.commands.train import parse
    from bigrerank import distributed
    from bigrerank.training import trainer

    steps_peak = []
    model_args, data_args, args = parse(argv)
    engine = trainer.train(model_args, data_args, args, on_reduced=lambda _: steps_peak.append(rss_mib())).engine
    engine.eval()
    with torch.no_grad():
        scores = engine(**probe_batch(Path(model_args.model_name_or_path))).logits.float().squeeze(-1).tolist()
    result = {"rank": distributed.rank(), "steps_peak_rss_mib": max(steps_peak), "peak_rss_mib": rss_mib(),
              "scores": scores}
    Path(result_dir, f"rank{distributed.rank()}.json").write_text(json.dumps(result))
    distributed.teardown()


def run_engine(model_dir: Path, data: Path, out: Path, steps: int, extra: list[str], log) -> dict:
    argv = common.trainer_argv(str(model_dir), data, out, "zero3_offload.json", GROUP, 1, steps, MAX_LEN,
                               ("--bf16", "--gradient_checkpointing", "--collaborative", "--grad_cache_chunk_size",
                                str(CHUNK), "--learning_rate", "1e-4", *extra))
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(RANKS), "--master_port",
           str(_free_port()), __file__, "_rank", str(out), *argv]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=common.child_env(1), cwd=common.REPO, capture_output=True, text=True)
    (out / "stderr.log").write_text(done.stderr[-200000:])
    if done.returncode != 0:
        log(f"engine run failed ({done.returncode}); stderr tail:\n{done.stderr[-4000:]}")
        raise SystemExit(1)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(RANKS)]
    rows = common.timed_rows(common.read_log(out))
    return {"wall_s": time.perf_counter() - start, "ranks": ranks,
            "step_s": sum(1 / r["pairs_per_s"] for r in rows) * GROUP / len(rows),
            "tokens_per_s": common.mean_rate(rows, "tokens_per_s"), "scores": ranks[0]["scores"]}


def _free_port() -> int:
    from bigrerank.distributed import free_port

    return free_port()


def export_scores(out: Path, model_dir: Path, dtype=None) -> list[float]:
    """The export's probe scores, loaded with AutoModelForSequenceClassification in `dtype` (default fp32)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=dtype or torch.float32).eval()
    with torch.no_grad():
        return model(**probe_batch(model_dir)).logits.float().squeeze(-1).tolist()


def plain_main(model_dir: str, data: str, steps: int, result_file: str) -> None:
    """The same step in plain PyTorch, one process: fp32 weights under bf16 autocast, checkpointing, the cached step
    by hand, torch AdamW."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bigrerank.data.grouped import GroupSampler, load_groups
    from bigrerank.data.pairs import PairEncoder
    from bigrerank.losses import lce_loss

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sampler = GroupSampler(load_groups(data, len(tokenizer), GROUP), GROUP, 42)
    encoder = PairEncoder(tokenizer, MAX_LEN)
    times, tokens = [], 0
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    for step in range(steps):
        query, passages, _ = sampler.scored_group(sampler.epoch_order(0)[step], 0)
        pairs = [encoder.encode_ids(query, p) for p in passages]
        chunks = [encoder.collate(pairs[i:i + CHUNK]) for i in range(0, GROUP, CHUNK)]
        start = time.perf_counter()
        with torch.no_grad(), bf16():
            scores = torch.cat([model(**c).logits.float().squeeze(-1) for c in chunks])
        leaf = scores.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(lce_loss(leaf.view(1, GROUP)), leaf)
        for i, c in enumerate(chunks):
            with bf16():
                chunk = model(**c).logits.float().squeeze(-1)
            (chunk * grad[i * CHUNK:(i + 1) * CHUNK]).sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
        tokens = sum(len(ids) for ids, _ in pairs)
    timed = times[1:] or times
    Path(result_file).write_text(json.dumps({"step_s": sum(timed) / len(timed), "tokens_per_s":
                                             tokens * len(timed) / sum(timed), "peak_rss_mib": rss_mib()}))


def model_flops_per_token(model_dir: Path) -> tuple[float, int, int]:
    """(6 N_non-embedding + 12 L d_attn T, N, N_non-embedding) with T = MAX_LEN (PaLM's attention term)."""
    from transformers import AutoConfig

    from safetensors import safe_open

    config = AutoConfig.from_pretrained(model_dir)

    total = 0
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    non_embedding = total - config.vocab_size * config.hidden_size
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * MAX_LEN
    return 6 * non_embedding + attention, total, non_embedding


def scale_run(kind: str, arch: str, steps: int, work: Path, log) -> None:
    import torch

    model_dir = write_model(arch, work / arch)
    flops, params, non_embedding = model_flops_per_token(model_dir)
    data = write_data(work / f"data-{GROUP}.jsonl", model_dir, queries=steps + 4)
    extra = ["--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05"] if kind == "lora" else []
    log(f"## ({'a' if kind == 'full' else 'b'}) {kind} {arch}: {params / 1e9:.3f}B parameters "
        f"({non_embedding / 1e9:.3f}B non-embedding), {steps} steps; {common.machine()}")
    engine = run_engine(model_dir, data, work / f"{kind}-{arch}", steps, extra, log)
    exported = export_scores(work / f"{kind}-{arch}", model_dir)
    live = engine["scores"]
    worst = max(abs(a - b) for a, b in zip(exported, live))
    spread = max(live) - min(live)
    rows = [[f"rank {r['rank']}", f"{r['steps_peak_rss_mib'] / 1024:.2f}", f"{r['peak_rss_mib'] / 1024:.2f}"]
            for r in engine["ranks"]]
    log(common.table(["rank", "peak RSS during steps (GiB)", "peak RSS incl. export (GiB)"], rows))
    log(f"s/step {engine['step_s']:.1f}, tokens/s {engine['tokens_per_s']:.1f} (steps 2..{steps}); "
        f"run wall time {engine['wall_s']:.0f} s")
    log(f"export (AutoModelForSequenceClassification, fp32) scores {['%.4f' % s for s in exported]} vs live engine "
        f"(bf16) {['%.4f' % s for s in live]}: max |diff| {worst:.4f} = {worst / max(spread, 1e-9):.3f} of the "
        f"live scores' spread; ranking {'same' if _order(exported) == _order(live) else 'DIFFERENT'}")
    exported_bf16 = export_scores(work / f"{kind}-{arch}", model_dir, torch.bfloat16)
    log(f"the same export loaded in bf16 (the live engine's dtype): {['%.4f' % s for s in exported_bf16]}, max |diff| "
        f"to the live engine {max(abs(a - b) for a, b in zip(exported_bf16, live)):.4f}")
    if kind == "full":
        torch.set_num_threads(RANKS)
        peak = common.matmul_gflops(torch.bfloat16)
        result = work / "plain.json"
        subprocess.run([sys.executable, __file__, "_plain", str(model_dir), str(data), str(steps), str(result)],
                       env=common.child_env(RANKS), cwd=common.REPO, check=True)
        plain = json.loads(result.read_text())
        mfu = lambda tps: flops * tps / (peak * 1e9)  # noqa: E731
        log(common.table(["", "tokens/s", "s/step", "MFU", "peak RSS (GiB)"], [
            ["bigrerank (ZeRO-3 offload, 2 ranks)", f"{engine['tokens_per_s']:.1f}", f"{engine['step_s']:.1f}",
             f"{mfu(engine['tokens_per_s']):.1%}", f"{max(r['peak_rss_mib'] for r in engine['ranks']) / 1024:.2f}"
             " per rank"],
            ["plain PyTorch loop (1 process)", f"{plain['tokens_per_s']:.1f}", f"{plain['step_s']:.1f}",
             f"{mfu(plain['tokens_per_s']):.1%}", f"{plain['peak_rss_mib'] / 1024:.2f}"]]))
        log(f"ratio {engine['tokens_per_s'] / plain['tokens_per_s']:.2f} (target >= 0.9); peak bf16 matmul "
            f"{peak:.0f} GFLOP/s on {RANKS} threads; {flops / 1e9:.2f} GFLOP per token")


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def ckpt_cost(work: Path, steps: int, log) -> None:
    """Peak RSS and s/step with and without --gradient_checkpointing: MiniLM (fp32) and a 6-layer Qwen2.5-0.5B (bf16);
    1 rank, ZeRO-2, group 16, plain step (no gradient cache), max_len 128."""
    import grad_cache_memory

    models = [("MiniLM-L6, fp32", common.minilm_dir(), ()),
              ("Qwen2.5-0.5B dims, 6 layers, bf16", str(write_model("qwen2.5-0.5b-6l", work / "qwen2.5-0.5b-6l")),
               ("--bf16",))]
    rows = []
    for label, model, precision in models:
        data = write_data(work / f"ckpt-{Path(model).name}.jsonl", Path(model), queries=steps + 2) \
            if "Qwen" in label else work / "minilm.jsonl"
        if "MiniLM" in label:
            common.write_synthetic_groups(data, GROUP - 1, steps + 2)
        result = {}
        for ckpt in (False, True):
            out = work / f"ckpt-{Path(model).name}-{ckpt}"
            argv = common.trainer_argv(model, data, out, "zero2.json", GROUP, 1, steps, MAX_LEN,
                                       (*precision, *(["--gradient_checkpointing"] if ckpt else [])))
            done = common.run_child([sys.executable, grad_cache_memory.__file__, "--child", "train", *argv],
                                    common.child_env(RANKS))
            peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
            step_s = GROUP / common.mean_rate(common.timed_rows(common.read_log(out)), "pairs_per_s")
            result[ckpt] = (peak, step_s)
        base = json.loads(common.run_child(
            [sys.executable, grad_cache_memory.__file__, "--child", "base",
             *common.trainer_argv(model, data, work / "base", "zero2.json", GROUP, 1, steps, MAX_LEN, precision)],
            common.child_env(RANKS)).stdout.strip().splitlines()[-1])["peak_mb"]
        (p0, t0), (p1, t1) = result[False], result[True]
        rows.append([label, f"{p0:.0f} / {p0 - base:.0f}", f"{p1:.0f} / {p1 - base:.0f}",
                     f"{1 - (p1 - base) / (p0 - base):.0%}", f"{t0:.2f}", f"{t1:.2f}", f"{t1 / t0:.2f}"])
    log(f"## gradient checkpointing: 1 rank ({RANKS} threads), ZeRO-2, group {GROUP}, 1 query a step, plain step, "
        f"max_len {MAX_LEN}, steps 2..{steps} timed; peak RSS / peak minus base (imports + model + engine) in MiB; "
        f"{common.machine()}")
    log(common.table(["model", "peak / added, off", "peak / added, on", "added memory saved", "s/step off",
                      "s/step on", "time on/off"], rows))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_rank":
        rank_main(sys.argv[3:], sys.argv[2])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_plain":
        plain_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["full", "lora", "ckpt", "write"])
    parser.add_argument("--arch", choices=sorted(ARCHS), default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--work", default=None, help="keep models, data and runs here (default: a temporary folder)")
    parser.add_argument("--log", default=None, help="also append the results to this file")
    opts = parser.parse_args()

    def log(text: str) -> None:
        print(text, flush=True)
        if opts.log:
            with open(opts.log, "a") as f:
                f.write(text + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(opts.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if opts.what == "ckpt":
            ckpt_cost(work, opts.steps or 3, log)
        elif opts.what == "write":
            model_dir = write_model(opts.arch or "qwen2.5-0.5b", work / (opts.arch or "qwen2.5-0.5b"))
            print(model_dir, write_data(work / f"data-{GROUP}.jsonl", model_dir, queries=opts.steps or 64))
        else:
            arch = opts.arch or ("qwen2.5-0.5b" if opts.what == "full" else "qwen2.5-3b")
            scale_run(opts.what, arch, opts.steps or (3 if opts.what == "full" else 2), work, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
