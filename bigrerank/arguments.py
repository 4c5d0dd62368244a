"""Command-line arguments of training, as dataclasses for `transformers.HfArgumentParser`.

Names follow Hugging Face `TrainingArguments` wherever the meaning is the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={
        "aliases": ["--model"], "help": "Hugging Face model directory or name (any backbone); `plan` also takes a "
                                        "config.json."})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    head_init_std: Optional[float] = field(
        default=None, metadata={"help": "Re-initialise the new classification head with this std (bias 0)."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (peft); 0 = full fine-tuning."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: Optional[list[str]] = field(default=None, metadata={
        "help": "Module names (or dotted suffixes) that get adapters; default: every linear projection of the "
                "attention and MLP blocks."})
    adapter_only: bool = field(default=False, metadata={
        "help": "LoRA: export the peft adapter (with the trained head) instead of the merged model."})

    def __post_init__(self):
        from .errors import InputError

        if self.lora_r < 0:
            raise InputError("--lora_r", f"must be >= 0, got {self.lora_r}")
        if self.lora_r and self.lora_alpha <= 0:
            raise InputError("--lora_alpha", f"must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError("--lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if self.adapter_only and not self.lora_r:
            raise InputError("--adapter_only", "needs --lora_r > 0 (a full fine-tune has no adapter)")


@dataclass
class DataArguments:
    train_path: str = field(metadata={"help": "Grouped training data: a .jsonl file or a directory of them."})
    train_group_size: int = field(default=8, metadata={"help": "Passages per query: 1 positive + n-1 negatives."})
    max_len: int = field(default=256, metadata={"help": "Maximum tokens of a (query, passage) pair."})


@dataclass
class TrainingArguments:
    output_dir: str = field(metadata={"help": "Where checkpoints, logs and the final model go."})
    ds_config: str = field(default="ds_configs/zero2.json", metadata={"help": "DeepSpeed JSON config."})
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    num_train_epochs: float = 1.0
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides num_train_epochs when > 0."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Queries per rank per micro-step."})
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    bf16: bool = False
    fp16: bool = False
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: Optional[int] = None
    report_to: str = field(default="none", metadata={"help": "wandb or none."})
    run_name: Optional[str] = None
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "A checkpoint directory, or 'latest' for the newest complete one."})
    loss: str = field(default="lce", metadata={
        "help": "lce (listwise, default), distill (listwise, the teacher's scores as soft target: the data must "
                "carry them) or bce (pointwise baseline)."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the student's scores."})
    collaborative: bool = field(
        default=False, metadata={"help": "Split each query's group across the data-parallel ranks."})
    grad_cache_chunk_size: int = field(
        default=0, metadata={"help": "Score pairs in no-grad chunks of this size, then replay (0 = off)."})
    max_nonfinite_steps: int = field(
        default=5, metadata={"help": "Stop after this many optimizer steps in a row with non-finite loss or grads."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute each block's activations in the backward (non-reentrant) instead of keeping them."})
    ddp_timeout: int = field(
        default=1800, metadata={"help": "Seconds a collective may wait before the ranks give up (a dead peer)."})
    ignore_memory_plan: bool = field(default=False, metadata={
        "help": "Train even when the memory plan predicts a peak above this machine's memory."})
    local_rank: int = field(default=-1, metadata={"help": "Set by the deepspeed launcher."})

    def __post_init__(self):
        if self.loss not in ("lce", "distill", "bce"):
            raise ValueError(f"--loss must be lce, distill or bce, got '{self.loss}'")
        if self.report_to not in ("wandb", "none"):
            raise ValueError(f"--report_to must be wandb or none, got '{self.report_to}'")
        if self.bf16 and self.fp16:
            raise ValueError("--bf16 and --fp16 are exclusive")
        if self.grad_cache_chunk_size < 0:
            raise ValueError("--grad_cache_chunk_size must be >= 0")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")


def parse(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)
