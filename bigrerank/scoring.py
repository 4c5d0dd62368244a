"""The scoring contract: how a model turns a (query, passage) pair into one score, saved beside the model.

Two heads:
- `classifier`: an `AutoModelForSequenceClassification` with one logit. Decoders read the last non-padding token;
  with the `pair` template an EOS token is appended, so that token is the same for every pair.
- `yes_no`: an `AutoModelForCausalLM` whose LM head is replaced by `AnswerHead`, the rows of the answer tokens
  only (the same Parameter, under the same name, so the state dict stays the model's own): the score is
  logit(yes) - logit(no) (or logit(yes) alone when the template has no "no") at the last real position of each
  right-padded row. Full-vocabulary logits are never formed, in training or inference.

`bigrerank_scoring.json` (score head, template, instruction, answer token ids, padding side, max_len) is written
with every checkpoint and export; a model without it gets its architecture's default, and the log says which.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data.pairs import PairEncoder
from .data.templates import BUILTIN, PAIR, PromptEncoder, TemplateSpec, answer_token_id, load_spec
from .errors import InputError

log = logging.getLogger("bigrerank.scoring")
CONTRACT_FILE = "bigrerank_scoring.json"
HEADS = ("classifier", "yes_no")


@dataclass
class ScoringContract:
    score_head: str
    template: dict | None              # the TemplateSpec as a dict; None = the tokenizer's pair template
    instruction: str | None = None
    yes_token_id: int | None = None
    no_token_id: int | None = None
    append_eos: bool = False           # classifier on a decoder with the pair template
    padding_side: str = "right"
    max_len: int | None = None
    pad_token_id: int | None = None

    @property
    def spec(self) -> TemplateSpec | None:
        return TemplateSpec(**self.template) if self.template else None

    @property
    def template_name(self) -> str:
        return self.template["name"] if self.template else PAIR

    def answer_rows(self) -> list[int]:
        return [self.yes_token_id] + ([self.no_token_id] if self.no_token_id is not None else [])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, directory) -> None:
        (Path(directory) / CONTRACT_FILE).write_text(self.to_json())

    @classmethod
    def read(cls, directory) -> "ScoringContract | None":
        path = Path(directory) / CONTRACT_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise InputError(path, f"unreadable scoring contract ({e})") from None


def is_decoder(config) -> bool:
    """A decoder-only language model (Llama, Qwen, Gemma …), as opposed to a BERT-style encoder."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    return (type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) not in MODEL_FOR_MASKED_LM_MAPPING
            and not getattr(config, "is_encoder_decoder", False))


def _causal_only(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return bool(archs) and all(a.endswith("ForCausalLM") for a in archs)


def default_head_and_template(config) -> tuple[str, str]:
    """The architecture's default: a causal-LM-only decoder scores yes/no with a prompt, anything else classifies."""
    if is_decoder(config) and _causal_only(config):
        return "yes_no", "bge-gemma" if config.model_type.startswith("gemma") else "qwen3-reranker"
    return "classifier", PAIR


def prepare_tokenizer(tokenizer, config) -> None:
    """Decoders: give the tokenizer a padding token (its EOS when it has none) and pad on the right."""
    if not is_decoder(config):
        return
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise InputError(config.name_or_path or "model", "the tokenizer has neither a padding nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("the tokenizer has no padding token: padding with its EOS token %r", tokenizer.eos_token)


def resolve(model_path: str, config, tokenizer, score_head: str | None = None, template: str | None = None,
            instruction: str | None = None, max_len: int | None = None) -> ScoringContract:
    """The contract to train or score with: the model's file, else its architecture's default; flags override.

    Checked before anything expensive: unknown head or template, a template without its slots, an answer
    string the tokenizer splits, yes_no on a model without an LM head.
    """
    saved = ScoringContract.read(model_path)
    if saved is not None and score_head in (None, saved.score_head) and template is None:
        log.info("scoring contract from %s: %s head, %s template", Path(model_path) / CONTRACT_FILE,
                 saved.score_head, saved.template_name)
        return build_contract(config, tokenizer, saved.score_head, saved.spec,
                              saved.instruction if instruction is None else instruction, max_len or saved.max_len,
                              model_path)
    default_head, default_template = default_head_and_template(config)
    head = score_head or default_head
    if head not in HEADS:
        raise InputError("--score_head", f"unknown score head {head!r} (choose {' or '.join(HEADS)})")
    if template is None:
        template = default_template if head == default_head else ("qwen3-reranker" if head == "yes_no" else PAIR)
        log.info("%s: no %s and no --template: %s head with the %s template (the default for '%s' checkpoints "
                 "of %s)", model_path, CONTRACT_FILE if saved is None else "usable " + CONTRACT_FILE, head, template,
                 config.model_type, "/".join(getattr(config, "architectures", None) or ["unknown architecture"]))
    return build_contract(config, tokenizer, head, load_spec(template), instruction, max_len, model_path)


def build_contract(config, tokenizer, head: str, spec: TemplateSpec | None, instruction: str | None,
                   max_len: int | None, where) -> ScoringContract:
    prepare_tokenizer(tokenizer, config)
    if head == "yes_no":
        if not is_decoder(config):
            raise InputError(where, f"--score_head yes_no needs a decoder with a language-model head; "
                                    f"'{config.model_type}' is not one")
        archs = getattr(config, "architectures", None) or []
        if archs and not any(a.endswith("ForCausalLM") for a in archs) and not config.tie_word_embeddings:
            raise InputError(where, f"--score_head yes_no: the checkpoint has no LM head (architectures: {archs})")
        if spec is None:
            raise InputError("--template", f"--score_head yes_no needs a prompt template ({', '.join(BUILTIN)} "
                                           "or a .json file), not 'pair'")
    append_eos = head == "classifier" and spec is None and is_decoder(config)
    if append_eos and tokenizer.pad_token_id == tokenizer.eos_token_id:
        log.warning("the padding token is the EOS token: the classifier reads the token before the appended EOS "
                    "(the same in training, rerank and export)")
    yes = answer_token_id(tokenizer, spec.yes, f"template {spec.name}") if spec else None
    no = answer_token_id(tokenizer, spec.no, f"template {spec.name}") if spec and spec.no is not None else None
    if spec is not None and instruction is None:
        instruction = spec.instruction
    return ScoringContract(score_head=head, template=spec.to_dict() if spec else None, instruction=instruction,
                           yes_token_id=yes, no_token_id=no,
                           append_eos=append_eos, max_len=max_len,
                           pad_token_id=tokenizer.pad_token_id)


def make_encoder(tokenizer, max_len: int, contract: ScoringContract | None) -> PairEncoder:
    """The one place that picks the pair encoder: the tokenizer's pair template, or the contract's prompt."""
    if contract is None or contract.spec is None:
        return PairEncoder(tokenizer, max_len, append_eos=bool(contract and contract.append_eos))
    return PromptEncoder(tokenizer, max_len, contract.spec, contract.instruction)


class AnswerHead(nn.Module):
    """The LM head cut to the answer tokens' rows: (…, hidden) -> (…, len(rows)); `weight` is the LM head's own."""

    def __init__(self, lm_head: nn.Linear, rows: list[int]):
        super().__init__()
        self.weight = lm_head.weight
        self.bias = lm_head.bias if getattr(lm_head, "bias", None) is not None else None
        self.rows = list(rows)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor(self.rows, device=self.weight.device)
        bias = self.bias.index_select(0, rows) if self.bias is not None else None
        return F.linear(hidden, self.weight.index_select(0, rows), bias)


def install_answer_head(model, contract: ScoringContract) -> None:
    """Replace a causal LM's output layer by the answer rows of its own weight (state dict keys unchanged)."""
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise InputError(model.config.name_or_path or "model", "--score_head yes_no: the model has no LM head")
    if isinstance(lm_head, AnswerHead):
        return
    model.set_output_embeddings(AnswerHead(lm_head, contract.answer_rows()))


def scores_from_logits(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(pairs,) scores: a classifier's (pairs, 1), or the answer head's (pairs, positions, 1|2) read at each
    right-padded row's last real position (yes - no)."""
    if logits.dim() == 2:
        return logits.squeeze(-1)
    if attention_mask is None:
        last = torch.full((logits.shape[0],), logits.shape[1] - 1, device=logits.device)
    else:
        last = attention_mask.sum(-1).to(logits.device) - 1
    at_last = logits[torch.arange(logits.shape[0], device=logits.device), last]
    return at_last[:, 0] - at_last[:, 1] if at_last.shape[-1] == 2 else at_last[:, 0]
