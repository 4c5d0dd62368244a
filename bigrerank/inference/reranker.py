"""`RerankerForInference`: score (query, passage) pairs with a trained reranker, either score head.

The original Reranker library's API (`from_pretrained`, `tokenize`, `forward` returning the model output),
plus `score`/`rerank` conveniences and a fast scoring loop (sharded_scoring.py): length-sorted batches with
dynamic padding, `torch.inference_mode`, optional half precision and `torch.compile` (checked against eager at its
first batches, checked_compile.py), and, for BERT-family models, first-token scoring (first_token.py: the last
layer runs for the scored token only; a batch without padding runs without an attention mask). On a GPU, batches
are copied from pinned memory without blocking and scores stay on the device until the end, so the host prepares
the next batch while the GPU computes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import BatchEncoding
from transformers.modeling_outputs import SequenceClassifierOutput

from .. import ds_config, heads
from ..contract import ScoringContract, make_encoder, resolve_contract
from ..data.packing import LAYOUT_KEYS, row_length
from ..data.pairs import PairEncoder
from ..gguf_file import is_gguf
from ..heads import scores_from_logits
from ..model import check_packing, load_config, load_reranker, load_tokenizer, max_len_problem, pair_scores
from ..sharded_scoring import Pair, score_sharded
from .checked_compile import CheckedCompile
from .first_token import FirstTokenScorer, unsupported

PRECISIONS = ds_config.DTYPES
DEFAULT_MAX_LEN = 512
FIRST_TOKEN_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype scoring runs in; fp16 is refused on CPU, where it is slow and poorly supported."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 needs a CUDA device; on CPU use bf16")
    return PRECISIONS[precision]


def default_max_len(config, tokenizer) -> int:
    """The longest pair the model can read: the smallest of 512, its position table and the tokenizer's limit."""
    limits = [DEFAULT_MAX_LEN, getattr(config, "max_position_embeddings", DEFAULT_MAX_LEN), tokenizer.model_max_length]
    return int(min(limits))


def effective_max_len(max_len: int | None, contract: ScoringContract | None, config, tokenizer) -> int:
    """The pair length a model scores at: `max_len`, else its contract's (the training length), else its limit."""
    return max_len or (contract and contract.max_len) or default_max_len(config, tokenizer)


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _broadcast(queries: str | Sequence[str], passages: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """Equal-length query and passage lists; a single query is paired with every passage."""
    queries, passages = _as_list(queries), _as_list(passages)
    if len(queries) == 1 and len(passages) != 1:
        queries = queries * len(passages)
    if len(queries) != len(passages):
        raise ValueError(f"got {len(queries)} queries for {len(passages)} passages")
    return queries, passages


class RerankerForInference(nn.Module):
    """A reranker model, one score per (query, passage) pair, ready for scoring: a classifier's logit, or a causal
    LM's yes/no answer logits (heads.py)."""

    def __init__(self, hf_model, tokenizer, max_len: int | None = None, device=None, precision: str = "fp32",
                 torch_compile: bool = False, contract: ScoringContract | None = None, padding_free: bool = False,
                 pack_len: int | None = None):
        """`padding_free`: score batches packed into rows of `pack_len` tokens (default: data/packing.py's factor
        x the pair length), after a check that the model scores packed pairs as it scores them alone."""
        super().__init__()
        self.contract = contract
        (contract.head if contract is not None else heads.CLASSIFIER).check_loaded(hf_model)
        self.device = torch.device(device) if device is not None else default_device()
        self.precision, self.compute_dtype = precision, compute_dtype(precision, self.device)
        self.hf_model = hf_model.to(device=self.device, dtype=self.compute_dtype).eval()
        self.tokenizer = tokenizer
        self.max_positions = getattr(hf_model.config, "max_position_embeddings", None)
        self.max_len = self._check_max_len(effective_max_len(max_len, contract, hf_model.config, tokenizer))
        self._encoders: dict[int, PairEncoder] = {}
        self.padding_free, self.pack_len = padding_free, pack_len
        if padding_free:
            if pack_len is not None and pack_len < self.max_len:
                raise ValueError(f"--pack_len must be at least the pair length {self.max_len}, got {pack_len}")
            check_packing(self.hf_model, self.encoder(), self.device, hf_model.config.name_or_path or "model")
        # Why the model's own forward is used instead of first-token scoring (None: it is not).
        self.full_forward_reason = unsupported(self.hf_model)
        # compiled: checked against eager at its first batches, eager for good if it fails or differs
        self._model_scores = self._own_forward
        if self.full_forward_reason is None:
            self._scorer = FirstTokenScorer(self.hf_model, unfused_bias=torch_compile)
            self._score_pairs = CheckedCompile(self._scorer, self.compute_dtype) if torch_compile else self._scorer
        elif torch_compile:
            self._model_scores = CheckedCompile(self._own_forward, self.compute_dtype)

    @classmethod
    def from_pretrained(cls, model_name_or_path, max_len: int | None = None, device=None, precision: str = "fp32",
                        torch_compile: bool = False, score_head: str | None = None, template: str | None = None,
                        instruction: str | None = None, padding_free: bool = False, pack_len: int | None = None,
                        **model_kwargs) -> "RerankerForInference":
        """Load a Hugging Face directory (model + tokenizer), e.g. a `bigrerank train` output, scored the way its
        `bigrerank_scoring.json` says; a model without one (a released reranker, a base model, a GGUF file) gets its
        architecture's default or `score_head` / `template` / `instruction`. A GGUF file is dequantized straight into
        the `precision` it scores in."""
        if is_gguf(model_name_or_path) and precision in PRECISIONS:
            model_kwargs.setdefault("dtype", PRECISIONS[precision])
        config = load_config(model_name_or_path)
        tokenizer = load_tokenizer(model_name_or_path, config)
        contract = resolve_contract(str(model_name_or_path), config, tokenizer, score_head, template, instruction)
        contract.head.check_scorable(config, model_name_or_path)
        hf_model = load_reranker(model_name_or_path, contract=contract, one_logit=False, **model_kwargs)
        return cls(hf_model, tokenizer, max_len=max_len, device=device, precision=precision,
                   torch_compile=torch_compile, contract=contract, padding_free=padding_free, pack_len=pack_len)

    def _check_max_len(self, max_len: int) -> int:
        problem = max_len_problem(max_len, self.max_positions)
        if problem:
            raise ValueError(problem)
        return max_len

    def encoder(self, max_len: int | None = None) -> PairEncoder:
        """The pair encoder for `max_len` (default: the reranker's), built once; packing when padding-free."""
        max_len = self._check_max_len(max_len or self.max_len)
        if max_len not in self._encoders:
            pack_len = row_length(max_len, self.pack_len) if self.padding_free else None
            self._encoders[max_len] = make_encoder(self.tokenizer, max_len, self.contract, pack_len)
        return self._encoders[max_len]

    def tokenize(self, queries: str | Sequence[str], passages: str | Sequence[str], max_len: int | None = None,
                 return_tensors: str | None = None, *, max_length: int | None = None, truncation: bool = True,
                 padding: bool = True) -> BatchEncoding:
        """Model inputs of (query, passage) pairs with the tokenizer's pair template, passage cut first.

        Strings or lists (one query is paired with every passage); batches are always padded and truncated
        (`truncation`/`padding` are accepted for compatibility with tokenizer calls). Without `return_tensors`
        a single pair gives flat lists, like a tokenizer call.
        """
        encoder = self.encoder(max_len or max_length)
        batch = encoder.pad(encoder.encode_texts(*_broadcast(queries, passages)))
        if return_tensors == "pt":
            return BatchEncoding(batch)
        data = {name: tensor.tolist() for name, tensor in batch.items()}
        if return_tensors is None and isinstance(queries, str) and isinstance(passages, str):
            data = {name: rows[0] for name, rows in data.items()}
        return BatchEncoding(data, tensor_type=return_tensors)

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def forward(self, batch):
        """The model output for a tokenized batch, padded or packed; `.logits` has shape (pairs, 1)."""
        batch = dict(batch)
        if LAYOUT_KEYS[0] in batch:
            batch = {name: value.to(self.device, non_blocking=True) for name, value in batch.items()}
            with torch.inference_mode(), self._autocast():
                return SequenceClassifierOutput(logits=pair_scores(self.hf_model, batch).unsqueeze(-1))
        first_token = self.full_forward_reason is None and set(batch) <= FIRST_TOKEN_INPUTS
        mask = batch.get("attention_mask")
        if first_token and mask is not None and mask.device.type == "cpu" and bool(mask.all()):
            batch.pop("attention_mask")  # no padding: the same scores without a mask (checked before any copy)
        batch = {name: value.to(self.device, non_blocking=True) for name, value in batch.items()}
        with torch.inference_mode(), self._autocast():
            if not first_token:  # another model, or inputs first-token scoring does not take (position_ids, …)
                return SequenceClassifierOutput(logits=self._model_scores(**batch).unsqueeze(-1))
            self._scorer.check_weights()
            return SequenceClassifierOutput(logits=self._score_pairs(**batch))

    def _own_forward(self, **batch) -> torch.Tensor:
        """(pairs,) scores of the model's own forward, read by its head."""
        return scores_from_logits(self.hf_model(**batch).logits, batch.get("attention_mask"))

    def score_batch(self, pairs: list[Pair]) -> torch.Tensor:
        """(pairs,) float32 scores of one batch of encoded pairs, left on the device."""
        return self(self.encoder().collate(pairs, pin_memory=self.device.type == "cuda")).logits[:, 0].float()

    def score_encoded(self, pairs: Sequence[Pair], batch_size: int = 64, bar: tqdm | None = None) -> list[float]:
        """Scores of encoded pairs (PairEncoder output), in input order, computed in length-sorted batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        return score_sharded(self.score_batch, pairs, batch_size, on_batch=bar.update if bar is not None else None)

    def score(self, queries: str | Sequence[str], passages: str | Sequence[str], batch_size: int = 64,
              progress: bool = False) -> list[float]:
        """One score per (query, passage) pair, in input order; one query may be paired with many passages."""
        queries, passages = _broadcast(queries, passages)
        pairs = self.encoder().encode_texts(queries, passages) if passages else []
        with tqdm(total=len(pairs), unit="pair", desc="scoring", disable=not progress) as bar:
            return self.score_encoded(pairs, batch_size, bar)

    def rerank(self, query: str, passages: Sequence[str], top_k: int | None = None,
               batch_size: int = 64) -> list[tuple[int, float]]:
        """(passage index, score) pairs, best first (ties: lower index first), cut to `top_k` when given."""
        if not passages:
            return []
        scores = self.score(query, list(passages), batch_size)
        ranked = sorted(enumerate(scores), key=lambda item: (-item[1], item[0]))
        return ranked[:top_k]
