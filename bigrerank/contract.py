"""The scoring contract: how a model turns a (query, passage) pair into one score, saved beside the model.

It names the score head (heads.py) and the pair's text: the tokenizer's pair template (a decoder's classifier
gets an EOS token appended, so its last token is the same for every pair) or a prompt template with its
instruction and answer tokens. `bigrerank_scoring.json` (score head, template, instruction, answer token ids,
padding side, max_len) is written with every checkpoint and export; a model without it gets its architecture's
default, and the log says which.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from . import heads
from .data.pairs import PairEncoder
from .data.templates import (CHAT, NAMES, PAIR, PromptEncoder, TemplateSpec, answer_token_id,
                             has_chat_template, load_spec, spec_from_dict)
from .errors import InputError

log = logging.getLogger("bigrerank.contract")
CONTRACT_FILE = "bigrerank_scoring.json"


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

    @property
    def head(self) -> heads.ScoreHead:
        return heads.get(self.score_head)

    def answer_rows(self) -> list[int] | None:
        """The LM-head rows the yes_no head reads: yes, then no when the template has one (None without a prompt)."""
        if self.yes_token_id is None:
            return None
        return [self.yes_token_id] + ([self.no_token_id] if self.no_token_id is not None else [])

    def as_classifier(self) -> "ScoringContract":
        """The contract of this model exported as a classifier (heads.py: `exported`): the same pair text, its last
        token read by a one-logit head; a classifier's own contract as it is."""
        if self.head is heads.CLASSIFIER:
            return self
        return replace(self, score_head=heads.CLASSIFIER.name, append_eos=False)

    def check_keep_causal_lm(self, where) -> None:
        """InputError for --keep_causal_lm on a model whose head is not yes_no (it has no causal LM to keep)."""
        if self.head is not heads.YES_NO:
            raise InputError(where, f"--keep_causal_lm: keeps a yes_no model a causal LM; this model's score head is "
                                    f"{self.score_head}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, directory) -> None:
        (Path(directory) / CONTRACT_FILE).write_text(self.to_json())

    @classmethod
    def read(cls, directory) -> "ScoringContract | None":
        """The contract saved in `directory` (None without one); a file edited into something else is an InputError
        naming its field."""
        path = Path(directory) / CONTRACT_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(path, f"unreadable scoring contract ({e})") from None
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw, where) -> "ScoringContract":
        """A contract from its JSON object, every field checked."""
        if not isinstance(raw, dict):
            raise InputError(where, "a scoring contract is a JSON object")
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(where, f"unknown field(s) {', '.join(unknown)}")
        if raw.get("score_head") not in heads.HEADS:
            raise InputError(where, f"{raw.get('score_head')!r} is no score head ({' or '.join(heads.HEADS)})",
                             field="score_head")
        if raw.get("template") is not None:
            spec_from_dict(raw["template"], where)
        elif raw["score_head"] == heads.YES_NO.name:
            raise InputError(where, "the yes_no head needs a prompt template", field="template")
        for name, ok, wanted in _FIELD_TYPES:
            if name in raw and not ok(raw[name]):
                raise InputError(where, f"{wanted}, got {raw[name]!r}", field=name)
        return cls(**raw)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FIELD_TYPES = (  # (field, check, what the check wants) of the contract's fields besides score_head and template
    ("instruction", lambda v: v is None or isinstance(v, str), "must be a string or null"),
    ("yes_token_id", lambda v: v is None or _is_int(v), "must be a token id or null"),
    ("no_token_id", lambda v: v is None or _is_int(v), "must be a token id or null"),
    ("append_eos", lambda v: isinstance(v, bool), "must be true or false"),
    ("padding_side", lambda v: v == "right", "must be 'right' (pairs are right-padded)"),
    ("max_len", lambda v: v is None or (_is_int(v) and v > 0), "must be a positive integer or null"),
    ("pad_token_id", lambda v: v is None or _is_int(v), "must be a token id or null"),
)


def default_head_and_template(config, tokenizer) -> tuple[str, str]:
    """The model's default: a causal-LM-only decoder scores yes/no with a prompt, anything else classifies."""
    if heads.is_decoder(config) and heads.causal_lm_only(config):
        return heads.YES_NO.name, default_prompt(config, tokenizer)
    return heads.CLASSIFIER.name, PAIR


def default_prompt(config, tokenizer) -> str:
    """The yes_no head's default template: the released reranker's of the architecture (Gemma: bge-gemma; Qwen3:
    qwen3-reranker, Qwen3's own chat format), else the tokenizer's chat template (`chat`), else qwen3-reranker."""
    if config.model_type.startswith("gemma"):
        return "bge-gemma"
    if not config.model_type.startswith("qwen3") and has_chat_template(tokenizer):
        return CHAT
    return "qwen3-reranker"


def resolve_contract(model_path: str, config, tokenizer, score_head: str | None = None, template: str | None = None,
                     instruction: str | None = None, max_len: int | None = None) -> ScoringContract:
    """The contract to train or score with: the model's file, else its architecture's default; flags override.

    `tokenizer` is the loader's (model.load_tokenizer: a decoder's pads on the right). Checked before anything
    expensive: unknown head or template, a template without its slots, an answer string the tokenizer splits,
    yes_no on a model without an LM head.
    """
    saved = ScoringContract.read(model_path)
    if saved is not None and score_head in (None, saved.score_head) and template is None:
        log.info("scoring contract from %s: %s head, %s template", Path(model_path) / CONTRACT_FILE,
                 saved.score_head, saved.template_name)
        check_instruction(instruction, saved.spec)
        return build_contract(config, tokenizer, saved.score_head, saved.spec,
                              saved.instruction if instruction is None else instruction, max_len or saved.max_len,
                              model_path)
    default_head, default_template = default_head_and_template(config, tokenizer)
    head = heads.get(score_head or default_head).name
    if template is None:
        if head == default_head:
            template = default_template
        else:
            template = default_prompt(config, tokenizer) if head == heads.YES_NO.name else PAIR
        log.info("%s: no %s and no --template: %s head with the %s template (the default for '%s' checkpoints "
                 "of %s)", model_path, CONTRACT_FILE if saved is None else "usable " + CONTRACT_FILE, head, template,
                 config.model_type, "/".join(getattr(config, "architectures", None) or ["unknown architecture"]))
    spec = load_spec(template, tokenizer)
    check_instruction(instruction, spec)
    return build_contract(config, tokenizer, head, spec, instruction, max_len, model_path)


def check_instruction(instruction: str | None, spec: TemplateSpec | None) -> None:
    """An --instruction needs a template with an {instruction} slot to go into."""
    if instruction is not None and (spec is None or "{instruction}" not in spec.text):
        name = spec.name if spec is not None else PAIR
        raise InputError("--instruction", f"the {name} template has no {{instruction}} slot to put it in")


def build_contract(config, tokenizer, head: str, spec: TemplateSpec | None, instruction: str | None,
                   max_len: int | None, where) -> ScoringContract:
    heads.get(head).check_config(config, where)
    if head == heads.YES_NO.name and spec is None:
        raise InputError("--template", f"--score_head yes_no needs a prompt template ({', '.join(NAMES[1:])} "
                                       "or a .json file), not 'pair'")
    append_eos = head == heads.CLASSIFIER.name and spec is None and heads.is_decoder(config)
    if append_eos and tokenizer.pad_token_id == tokenizer.eos_token_id:
        log.warning("the padding token is the EOS token: the classifier reads the token before the appended EOS "
                    "(the same in training, rerank and export)")
    yes = answer_token_id(tokenizer, spec.yes, f"template {spec.name}") if spec else None
    no = answer_token_id(tokenizer, spec.no, f"template {spec.name}") if spec and spec.no is not None else None
    if yes is not None and yes == no:
        raise InputError(f"template {spec.name}", f"yes {spec.yes!r} and no {spec.no!r} are the same token ({yes}): "
                                                   "every score would be 0")
    if spec is not None and instruction is None:
        instruction = spec.instruction
    return ScoringContract(score_head=head, template=spec.to_dict() if spec else None, instruction=instruction,
                           yes_token_id=yes, no_token_id=no,
                           append_eos=append_eos, max_len=max_len,
                           pad_token_id=tokenizer.pad_token_id)


def make_encoder(tokenizer, max_len: int, contract: ScoringContract | None, pack_len: int | None = None) -> PairEncoder:
    """The one place that picks the pair encoder: the tokenizer's pair template, or the contract's prompt; its
    batches packed into rows of `pack_len` tokens when given (padded otherwise)."""
    if contract is None or contract.spec is None:
        encoder = PairEncoder(tokenizer, max_len, append_eos=bool(contract and contract.append_eos))
    else:
        encoder = PromptEncoder(tokenizer, max_len, contract.spec, contract.instruction)
    encoder.pack_len = pack_len
    return encoder
