"""`bigrerank consolidate`: a DeepSpeed checkpoint -> a plain Hugging Face reranker directory."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..checkpoints.consolidate import check_export_dir, consolidate
from .parser import EXPORT_DTYPES, CommandParser, shard_size

USAGE = "bigrerank consolidate CHECKPOINT OUTPUT [--tag TAG]   (or --checkpoint CHECKPOINT --output OUTPUT)"


@dataclass
class ConsolidateArguments:
    checkpoint: str = field(metadata={
        "help": "checkpoint save directory (<output_dir>/checkpoints: its 'latest' or --tag), or a tag directory"})
    output: str = field(metadata={
        "help": "Hugging Face directory to write: new, empty, or a previous export (replaced)",
        "aliases": ["--out_dir"]})
    tag: str | None = field(default=None, metadata={"help": "checkpoint tag, e.g. step-500 (None: 'latest')"})
    keep_causal_lm: bool = field(default=False, metadata={
        "help": "export a yes_no model as its causal LM instead of a sequence classifier"})
    adapter_only: bool = field(default=False, metadata={
        "help": "LoRA: export the peft adapter (and a classifier's trained head) instead of the merged model"})
    max_shard_size: str = field(default="5GB", metadata={
        "help": "largest safetensors file, in transformers' notation (5GB, 500MB, 2GiB); larger models are sharded "
                "with an index"})
    export_dtype: str | None = field(default=None, metadata={
        "help": "dtype of the exported weights, made from the fp32 masters (None: the dtype the run trained in)",
        "choices": list(EXPORT_DTYPES)})

    def __post_init__(self):
        shard_size(self.max_shard_size)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(ConsolidateArguments, "consolidate", usage=USAGE,
                           description="Turn a DeepSpeed checkpoint into a Hugging Face reranker directory.")
    (args,) = parser.parse(_positional(argv))
    check_export_dir(args.output)
    out = consolidate(args.checkpoint, args.output, args.tag, args.keep_causal_lm, args.adapter_only,
                      max_shard_size=shard_size(args.max_shard_size), export_dtype=args.export_dtype)
    print(f"wrote {out}")
    return 0


def _positional(argv: list[str] | None) -> list[str] | None:
    """Accept `consolidate CHECKPOINT OUTPUT [--tag TAG]` (positional) as well as --checkpoint/--output."""
    if argv is None or len(argv) < 2 or argv[0].startswith("-") or argv[1].startswith("-"):
        return argv
    return ["--checkpoint", argv[0], "--output", argv[1], *argv[2:]]
