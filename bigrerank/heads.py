"""The two score heads: how a model turns a (query, passage) pair into one score.

- `classifier`: an `AutoModelForSequenceClassification` with one logit. An encoder reads its first token; a decoder
  its last non-padding token (its config's `pad_token_id` says which tokens pad).
- `yes_no`: an `AutoModelForCausalLM` whose LM head is replaced by `AnswerHead`, the rows of the answer tokens
  only (the same Parameter, under the same name, so the state dict stays the model's own): the score is
  logit(yes) - logit(no) (or logit(yes) alone when the template has no "no") at the last real position of each
  right-padded row. Full-vocabulary logits are never formed, in training or inference.

Each head is one object that knows its auto class, how it is set up on a loaded model, how scores come from the
model's logits, its peft task type, its export form and how many outputs per pair the planner counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from .errors import InputError


def is_decoder(config) -> bool:
    """A decoder-only language model (Llama, Qwen, Gemma …), as opposed to a BERT-style encoder."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    return (type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) not in MODEL_FOR_MASKED_LM_MAPPING
            and not getattr(config, "is_encoder_decoder", False))


def causal_lm_only(config) -> bool:
    """The checkpoint names causal-LM architectures only (a base or chat LLM, not a classifier)."""
    archs = getattr(config, "architectures", None) or []
    return bool(archs) and all(a.endswith("ForCausalLM") for a in archs)


class AnswerHead(nn.Module):
    """The LM head cut to the answer tokens' rows: (…, hidden) -> (…, len(rows)) in float32; `weight` is the LM
    head's own. Two rows cost nothing in float32, and in bf16 the two logits would be rounded to 8 bits before
    their difference is taken: scores on steps of 1/16-1/8, most pairs of a query tied (SmolLM2 on SciFact)."""

    def __init__(self, lm_head: nn.Linear, rows: list[int]):
        super().__init__()
        self.weight = lm_head.weight
        self.bias = lm_head.bias if getattr(lm_head, "bias", None) is not None else None
        self.rows = list(rows)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor(self.rows, device=self.weight.device)
        bias = self.bias.index_select(0, rows).float() if self.bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):  # inference scores under bf16 autocast
            return F.linear(hidden.float(), self.weight.index_select(0, rows).float(), bias)


class ClassifierHead:
    """A sequence classifier's single logit."""

    name = "classifier"
    auto_class = AutoModelForSequenceClassification
    peft_task = "SEQ_CLS"  # peft trains the head (`classifier` or `score`) in full beside the adapters
    outputs_per_pair = 1

    def configure(self, config, pad_token_id: int | None, one_logit: bool = True) -> None:
        """One logit (`one_logit`: a new head where the checkpoint has another); a decoder's padding token, so it
        reads the last non-padding one."""
        if one_logit:
            config.num_labels = 1
        if pad_token_id is not None and is_decoder(config):
            config.pad_token_id = pad_token_id

    def load_options(self, one_logit: bool = True) -> dict:
        return {"ignore_mismatched_sizes": True} if one_logit else {}

    def install(self, model, answer_rows: list[int] | None) -> None:
        """Nothing to change on a loaded classifier."""

    def check_loaded(self, model) -> None:
        if model.config.num_labels != 1:
            raise ValueError("a reranker has one output logit (num_labels=1), "
                             f"this model has {model.config.num_labels}")

    def check_reset(self) -> None:
        """A classifier's head may be re-drawn (--head_init_std)."""

    def reset(self, model, std: float) -> None:
        """Re-draw the final classification layer: weights N(0, std), bias 0."""
        head = _last_linear(getattr(model, "classifier", None) or getattr(model, "score", None) or model)
        with torch.no_grad():
            head.weight.normal_(0.0, std)
            if head.bias is not None:
                head.bias.zero_()

    def check_config(self, config, where) -> None:
        """Any backbone can carry a classification head."""

    def check_scorable(self, config, where) -> None:
        """InputError for a causal-LM-only checkpoint: it has no trained classification head to score with."""
        if causal_lm_only(config):
            raise InputError(where, f"--score_head classifier: the checkpoint is a causal LM "
                                    f"({'/'.join(config.architectures)}) without a trained classification head; "
                                    "score it with --score_head yes_no")

    def on_meta(self, config):
        """The model class this head trains, built on `meta` (no weights); `config` gets one label."""
        config.num_labels = 1
        with torch.device("meta"):
            return self.auto_class.from_config(config)

    untargetable_why = "it trains in full beside the adapters"

    def untargetable(self, model) -> set:
        """Modules LoRA must not adapt: the classification head's (peft trains it in full, `modules_to_save`)."""
        heads = (getattr(model, name, None) for name in ("classifier", "score"))
        return {module for head in heads if isinstance(head, nn.Module) for module in head.modules()}

    def scores(self, logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(pairs,) scores from (pairs, 1) logits."""
        return logits.squeeze(-1)

    def exported(self, state_dict: dict, config, answer_rows, pad_token_id):
        """(state dict, config) of the export: the classifier as trained."""
        return state_dict, config


class YesNoHead:
    """A causal LM's answer-token logits at the end of its prompt."""

    name = "yes_no"
    auto_class = AutoModelForCausalLM
    peft_task = "CAUSAL_LM"  # only the adapters train; the answer rows of the LM head stay frozen
    outputs_per_pair = 2  # the yes and no rows, never the full vocabulary

    def configure(self, config, pad_token_id: int | None, one_logit: bool = True) -> None:
        """The causal LM's config as it is: the score is read by the attention mask, not the padding token."""

    def load_options(self, one_logit: bool = True) -> dict:
        return {}

    def install(self, model, answer_rows: list[int]) -> None:
        """Replace the LM head by the answer rows of its own weight (state dict keys unchanged)."""
        lm_head = model.get_output_embeddings()
        if lm_head is None:
            raise InputError(model.config.name_or_path or "model", "--score_head yes_no: the model has no LM head")
        if not isinstance(lm_head, AnswerHead):
            model.set_output_embeddings(AnswerHead(lm_head, answer_rows))

    def check_loaded(self, model) -> None:
        """A causal LM with its answer head: nothing more to check."""

    def check_reset(self) -> None:
        raise InputError("--head_init_std", "re-draws a classification head; the yes_no head has none")

    def reset(self, model, std: float) -> None:
        self.check_reset()

    def check_scorable(self, config, where) -> None:
        """A checkpoint the yes_no head can train can be scored by it."""

    def check_config(self, config, where) -> None:
        """InputError unless the checkpoint is a decoder with an LM head."""
        if not is_decoder(config):
            raise InputError(where, f"--score_head yes_no needs a decoder with a language-model head; "
                                    f"'{config.model_type}' is not one")
        archs = getattr(config, "architectures", None) or []
        if archs and not any(a.endswith("ForCausalLM") for a in archs) and not config.tie_word_embeddings:
            raise InputError(where, f"--score_head yes_no: the checkpoint has no LM head (architectures: {archs})")

    def on_meta(self, config):
        with torch.device("meta"):
            return self.auto_class.from_config(config)

    untargetable_why = "its answer rows stay frozen"

    def untargetable(self, model) -> set:
        """The LM head (the answer rows): no LoRA target."""
        return {model.get_output_embeddings()}

    def scores(self, logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(pairs,) scores from the answer head's (pairs, positions, 1|2) logits, read at each right-padded row's last
        real position: yes - no, or yes alone."""
        if attention_mask is None:
            last = torch.full((logits.shape[0],), logits.shape[1] - 1, device=logits.device)
        else:
            last = attention_mask.sum(-1).to(logits.device) - 1
        at_last = logits[torch.arange(logits.shape[0], device=logits.device), last]
        return at_last[:, 0] - at_last[:, 1] if at_last.shape[-1] == 2 else at_last[:, 0]

    def exported(self, state_dict: dict, config, answer_rows: list[int], pad_token_id: int | None):
        """(state dict, config) of the same model as a plain sequence classifier of its architecture; the state dict's
        values may be lazy (called to build a tensor): only the LM head's weight is built here.

        The score, logit(yes) - logit(no) at the last prompt position, is one linear map of the final hidden state
        there: (lm_head[yes] - lm_head[no]) . h. A `*ForSequenceClassification` model with one label and that row as
        its `score` weight reads the same hidden state (its last non-padding token), so `transformers`,
        sentence-transformers' CrossEncoder and TEI/vLLM-style servers score the export as it was trained.
        """
        if getattr(config, "final_logit_softcapping", None):
            raise ValueError(f"'{config.model_type}' caps its logits (final_logit_softcapping): a linear score head "
                             "cannot reproduce them; export with --keep_causal_lm")
        weight = state_dict.get("lm_head.weight")
        if weight is None:  # tied embeddings: the LM head is the input embedding
            weight = state_dict[_input_embedding_key(self.on_meta(config))]
        rows = (weight() if callable(weight) else weight)[answer_rows].float()
        score = rows[0] - rows[1] if len(rows) == 2 else rows[0]
        config = type(config).from_dict(config.to_dict())
        config.pad_token_id = pad_token_id
        classifier = CLASSIFIER.on_meta(config)
        config.architectures = [type(classifier).__name__]
        expected = set(classifier.state_dict())
        converted = {name: tensor for name, tensor in state_dict.items() if name in expected}
        converted["score.weight"] = score.unsqueeze(0)
        if "score.bias" in expected:
            converted["score.bias"] = torch.zeros(1)
        return converted, config


def _last_linear(module: nn.Module) -> nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no linear classification head to re-initialise")
    return linears[-1]


def _input_embedding_key(model) -> str:
    embeddings = model.get_input_embeddings()
    return next(f"{name}.weight" for name, module in model.named_modules() if module is embeddings)


CLASSIFIER, YES_NO = ClassifierHead(), YesNoHead()
HEADS = {head.name: head for head in (CLASSIFIER, YES_NO)}
ScoreHead = ClassifierHead | YesNoHead


def get(name: str) -> ScoreHead:
    """The head called `name`; InputError naming --score_head for another name."""
    if name not in HEADS:
        raise InputError("--score_head", f"unknown score head {name!r} (choose {' or '.join(HEADS)})")
    return HEADS[name]


def carried_by(model) -> ScoreHead:
    """The head a built model carries: yes_no for a causal LM (its LM head cut to the answer rows or not)."""
    return YES_NO if model.get_output_embeddings() is not None else CLASSIFIER


def for_peft_task(task: str) -> ScoreHead:
    """The head whose model a peft adapter of task type `task` goes on."""
    return YES_NO if task == YES_NO.peft_task else CLASSIFIER


def scores_from_logits(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(pairs,) scores, read by the head whose logits these are: a classifier's (pairs, 1), the answer head's
    (pairs, positions, rows)."""
    return (CLASSIFIER if logits.dim() == 2 else YES_NO).scores(logits, attention_mask)
