"""`bigrerank train`: train a reranker on a DeepSpeed engine and export it into --output_dir.

    python -m bigrerank.launch --model_name_or_path DIR --train_path data.jsonl --output_dir out \
        --ds_config ds_configs/zero2.json [--grad_cache_chunk_size K | --grad_cache_max_tokens N] [--collaborative] \
        [--padding_free] ...

The three argument dataclasses are the training settings (training/trainer.py reads them); their names follow
Hugging Face `TrainingArguments` wherever the meaning is the same.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from .. import distributed
from ..data.collection import RUN_FORMATS
from ..data.packing import PACK_FACTOR
from ..errors import UsageError
from ..evaluation.metrics import parse_metrics
from ..training.evaluation import eval_source
from ..training.preemption import PREEMPTED_EXIT_CODE
from ..training.trainer import train
from .parser import EXPORT_DTYPES, CommandParser, at_least, check_packing_flags, shard_size

LOSSES = ("lce", "distill", "bce")
REPORT_TO = ("wandb", "none")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={
        "aliases": ["--model"], "help": "Hugging Face model directory or name (any backbone), or a .gguf file "
                                        "(needs the gguf extra); `plan` also takes a config.json."})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    head_init_std: Optional[float] = field(
        default=None, metadata={"help": "Re-initialise the new classification head with this std (bias 0)."})
    score_head: Optional[str] = field(default=None, metadata={
        "help": "classifier (a 1-logit sequence classifier) or yes_no (a causal LM: logit(yes) - logit(no)); "
                "default: the model's bigrerank_scoring.json, else classifier, or yes_no for a causal-LM checkpoint"})
    keep_causal_lm: bool = field(default=False, metadata={
        "help": "Export a yes_no model as the causal LM (default: as a sequence classifier of the same architecture)"})
    lora_r: int = field(default=0, metadata={
        "help": "LoRA rank (peft); 0 = full fine-tuning. The adapters train, and a classifier's head in full "
                "(yes_no: the adapters alone; the LM head's answer rows stay frozen)."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: Optional[list[str]] = field(default=None, metadata={
        "help": "Module names (or dotted suffixes) that get adapters; default: every linear projection of the "
                "attention and MLP blocks."})
    adapter_only: bool = field(default=False, metadata={
        "help": "LoRA: export the peft adapter (with a classifier's trained head; a yes_no adapter, for "
                "AutoModelForCausalLM, has none) instead of the merged model."})
    max_shard_size: str = field(default="5GB", metadata={
        "help": "Largest safetensors file of the export, in transformers' notation (5GB, 500MB, 2GiB)."})
    export_dtype: Optional[str] = field(default=None, metadata={
        "help": "dtype of the exported weights, made from the fp32 masters (None: the dtype the run trains in).",
        "choices": list(EXPORT_DTYPES)})

    def __post_init__(self):
        shard_size(self.max_shard_size)
        at_least(self, ["head_init_std"], 0.0, inclusive=False)
        if self.lora_r < 0:
            raise UsageError(f"--lora_r: must be >= 0, got {self.lora_r}")
        if self.lora_r and self.lora_alpha <= 0:
            raise UsageError(f"--lora_alpha: must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"--lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.adapter_only and not self.lora_r:
            raise UsageError("--adapter_only: needs --lora_r > 0 (a full fine-tune has no adapter)")
        if self.lora_target_modules and not self.lora_r:
            raise UsageError("--lora_target_modules: needs --lora_r > 0 (0 means full fine-tuning)")


@dataclass
class DataArguments:
    train_path: str = field(metadata={"help": "Grouped training data: a .jsonl file or a directory of them."})
    train_group_size: int = field(default=8, metadata={
        "help": "Passages per query: 1 positive + n-1 negatives (at least 2: a group of one has nothing to contrast)."})
    max_len: int = field(default=256, metadata={"help": "Maximum tokens of a (query, passage) pair."})
    template: Optional[str] = field(default=None, metadata={
        "help": "pair (the tokenizer's pair template), qwen3-reranker, bge-gemma, chat (the tokenizer's chat "
                "template), or a JSON file with {instruction}, {query} and {passage} slots and the yes/no strings; "
                "default: the model's contract, else its architecture's (chat for a chat model)"})
    instruction: Optional[str] = field(default=None, metadata={"help": "The template's {instruction} text."})
    padding_free: bool = field(default=False, metadata={
        "help": "Pack the pairs of a batch into rows of --pack_len tokens (no padding: each pair's positions restart "
                "at 0 and its attention stays inside it); the same scores, checked at start-up."})
    pack_len: Optional[int] = field(default=None, metadata={
        "help": f"With --padding_free: tokens per packed row (default: {PACK_FACTOR} x --max_len)."})

    def __post_init__(self):
        at_least(self, ["train_group_size"], 2)
        at_least(self, ["max_len"], 1)
        check_packing_flags(self)


@dataclass
class TrainingArguments:
    output_dir: str = field(metadata={"help": "Where checkpoints, logs and the final model go."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start over in an --output_dir holding a previous run: its checkpoints/, train_log.jsonl and "
                "exported model are deleted first (nothing else). Without it such a directory is refused, unless "
                "the run resumes from it."})
    ds_config: str = field(default="ds_configs/zero2.json", metadata={
        "help": "DeepSpeed JSON config; a name under ds_configs/ is also found in the installed package."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (matrices only)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Linear warm-up over this fraction of the steps."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps (wins over --warmup_ratio when > 0)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training queries."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides num_train_epochs when > 0."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Queries per rank per micro-step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimizer step."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm to this (0: off)."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision."})
    fp16: bool = field(default=False, metadata={"help": "float16 mixed precision (GPU only)."})
    seed: int = field(default=42, metadata={"help": "Seed of the weights' new parts, the data order and the draws."})
    logging_steps: int = field(default=10, metadata={"help": "Log a row to train_log.jsonl every N optimizer steps."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: Optional[int] = field(default=None, metadata={
        "help": "Keep at most this many checkpoints (None: all)."})
    report_to: str = field(default="none", metadata={"help": "Also log to wandb, or not.", "choices": REPORT_TO})
    run_name: Optional[str] = field(default=None, metadata={"help": "Run name for wandb."})
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "A checkpoint directory, or 'latest' for the newest complete one."})
    loss: str = field(default="lce", metadata={
        "help": "lce (listwise, default), distill (listwise, the teacher's scores as soft target: the data must "
                "carry them) or bce (pointwise baseline).", "choices": LOSSES})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the student's scores."})
    collaborative: bool = field(
        default=False, metadata={"help": "Split each query's group across the data-parallel ranks."})
    grad_cache_chunk_size: int = field(
        default=0, metadata={"help": "Score pairs in no-grad chunks of this size, then replay (0 = off)."})
    prefetch_micro_batches: int = field(default=2, metadata={
        "help": "Micro-batches drawn and tokenized ahead in a background thread while the current one computes "
                "(0: on the training thread); train_log.jsonl's data_wait_s says how long the steps waited."})
    grad_cache_max_tokens: int = field(default=0, metadata={
        "help": "Gradient cache with chunks of at most this many tokens instead of a pair count, the pairs of a "
                "micro-batch grouped by length (0 = off; at least --max_len)."})
    max_nonfinite_steps: int = field(
        default=5, metadata={"help": "Stop after this many optimizer steps in a row with non-finite loss or grads."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute each block's activations in the backward (non-reentrant) instead of keeping them."})
    ddp_timeout: int = field(
        default=1800, metadata={"help": "Seconds a collective may wait before the ranks give up (a dead peer)."})
    ignore_memory_plan: bool = field(default=False, metadata={
        "help": "Train even when the memory plan predicts a peak above this machine's memory."})
    eval_path: Optional[str] = field(default=None, metadata={
        "help": "Evaluate while training on these candidate pairs: what `bigrerank rerank --input` takes (JSON lines "
                "{qid, pid, qry, psg})."})
    eval_ids: Optional[str] = field(default=None, metadata={
        "help": "With --eval_path: its qid<TAB>pid file, one row per JSON line (as `rerank --ids`)."})
    eval_run: Optional[str] = field(default=None, metadata={
        "help": "Evaluate on a first-stage run's candidates instead (as `rerank --run`): TREC, MS MARCO or score tsv."})
    eval_queries: Optional[str] = field(default=None, metadata={
        "help": "With --eval_run: its queries (BEIR jsonl or id<TAB>text)."})
    eval_corpus: Optional[str] = field(default=None, metadata={
        "help": "With --eval_run: its corpus (BEIR jsonl or id<TAB>text[<TAB>title])."})
    eval_depth: Optional[int] = field(default=None, metadata={
        "help": "With --eval_run: score each query's top K (None: all)."})
    eval_run_format: str = field(default="auto", metadata={
        "help": "With --eval_run: its format (auto: detected, and said; an ambiguous file needs it).",
        "choices": RUN_FORMATS})
    eval_qrels: Optional[str] = field(default=None, metadata={
        "help": "Relevance judgments of the eval queries (TREC or BEIR tsv); goes with --eval_path or --eval_run."})
    eval_steps: Optional[int] = field(default=None, metadata={
        "help": "Evaluate every N optimizer steps, and at the end (None: --logging_steps)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Eval pairs per forward pass on each rank."})
    metric_for_best_model: str = field(default="nDCG@10", metadata={
        "help": "The ir_measures metric (higher is better) that picks the best checkpoint, kept from rotation."})
    load_best_model_at_end: bool = field(default=False, metadata={
        "help": "Export the best checkpoint's model instead of the last one (needs --save_steps a multiple of "
                "--eval_steps)."})
    local_rank: int = field(default=-1, metadata={"help": "Set by the deepspeed launcher."})

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise UsageError(f"--loss must be lce, distill or bce, got '{self.loss}'")
        if self.report_to not in REPORT_TO:
            raise UsageError(f"--report_to must be wandb or none, got '{self.report_to}'")
        if self.bf16 and self.fp16:
            raise UsageError("--bf16 and --fp16 are exclusive")
        at_least(self, ["per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps",
                         "save_total_limit", "max_nonfinite_steps", "ddp_timeout"], 1)
        at_least(self, ["learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "warmup_ratio",
                         "warmup_steps", "max_grad_norm", "grad_cache_chunk_size", "grad_cache_max_tokens",
                         "prefetch_micro_batches"], 0)
        if self.grad_cache_chunk_size and self.grad_cache_max_tokens:
            raise UsageError("--grad_cache_chunk_size and --grad_cache_max_tokens exclude each other (chunks of a pair "
                             "count or of a token budget)")
        at_least(self, ["temperature"], 0.0, inclusive=False)
        for name in ("adam_beta1", "adam_beta2", "warmup_ratio"):
            if getattr(self, name) > 1:
                raise UsageError(f"--{name} must be at most 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise UsageError(f"--num_train_epochs must be above 0 (or give --max_steps), got {self.num_train_epochs}")
        if self.eval_steps is None:
            self.eval_steps = self.logging_steps
        check_evaluation(self)


def check_evaluation(args: TrainingArguments) -> None:
    """The evaluation flags go together: one candidate source with its qrels, a known metric, save steps that land
    on evaluations when the best model is exported."""
    source = eval_source(args)
    problem = source.problem(required=False)
    if problem:
        raise UsageError(problem)
    if source.given != (args.eval_qrels is not None):
        raise UsageError("--eval_qrels and the eval candidates (--eval_path or --eval_run) go together")
    if args.load_best_model_at_end and not source.given:
        raise UsageError("--load_best_model_at_end needs evaluation: --eval_qrels with --eval_path or --eval_run")
    at_least(args, ["eval_steps", "per_device_eval_batch_size"], 1)
    try:
        parse_metrics([args.metric_for_best_model])
    except ValueError as e:
        raise UsageError(f"--metric_for_best_model: {e}") from None
    if args.load_best_model_at_end and args.save_steps % args.eval_steps:
        raise UsageError(f"--load_best_model_at_end needs --save_steps to be a round multiple of --eval_steps, "
                         f"got {args.save_steps} and {args.eval_steps}")


def parse(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    model_args, data_args, args = CommandParser((ModelArguments, DataArguments, TrainingArguments), "train").parse(argv)
    if 0 < args.grad_cache_max_tokens < data_args.max_len:
        raise UsageError(f"--grad_cache_max_tokens must be at least --max_len ({data_args.max_len}): a chunk holds "
                         f"at least one pair; got {args.grad_cache_max_tokens}")
    return model_args, data_args, args


def main(argv: list[str] | None = None) -> int:
    """0 when done, 75 (PREEMPTED_EXIT_CODE) when a preemption signal stopped it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, args = parse(argv)
    try:
        result = train(model_args, data_args, args)
    except BaseException:
        distributed.teardown(wait_for_others=False)
        raise
    distributed.teardown()
    if result.preempted:
        logging.getLogger("bigrerank.train").warning("exiting with %d for a requeue", PREEMPTED_EXIT_CODE)
        return PREEMPTED_EXIT_CODE
    return 0
