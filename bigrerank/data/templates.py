"""Prompt templates for decoder rerankers: built-in (`qwen3-reranker`, `bge-gemma`), `chat`, or a user JSON file.

`chat` is the tokenizer's own chat template, rendered with a system message (the instruction) and a user message
(`<Query>: {query}` and `<Document>: {passage}` lines), followed by the assistant turn's opening as
`add_generation_prompt` writes it (the answer prefix: the scored position is its last token). The rendered text,
slots in place, is the template: it is written into the scoring contract, so a trained model keeps its prompt.

A template is one text with `{instruction}`, `{query}` and `{passage}` slots, plus the answer strings whose
LM-head rows the `yes_no` head reads ("yes"/"no"; bge-gemma scores the logit of "Yes" alone). The instruction
is filled in, the text is cut at the two slots, and the three pieces around them are tokenized once; every
pair's query and passage ids are spliced between them. The suffix (the scored position) is never cut:
`max_len` counts every token, the passage is cut first, then the query.

Where the template puts a space right before a slot (`<Query>: {query}`), byte-level BPE tokenizers spell that
space as part of the slot's first word. The space therefore travels with the slot: query and passage ids — text
tokenized by `token_ids`, or token-id training data — are decoded and re-tokenized with that space in front, so a
pair's tokens are those of the whole prompt tokenized at once, as the released recipes do, whatever form the
data came in. (A tokenizer whose pre-tokenizer merges a slot's last character with the template's next one,
such as Qwen's joining "?" with a following newline, differs from whole-prompt tokenization by that one token
boundary, the same in training and inference.)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2

from ..errors import InputError
from .pairs import PairEncoder, room_problem

PAIR = "pair"
CHAT = "chat"
SLOTS = ("{instruction}", "{query}", "{passage}")

_QWEN3_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                 'Note that the answer can only be "yes" or "no".')
_CHAT_INSTRUCTION = ('Judge whether the Document is relevant to the Query. '
                     'Note that the answer can only be "yes" or "no".')
_CHAT_USER = "<Query>: {query}\n<Document>: {passage}"
_BGE_GEMMA_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query "
                     "by providing a prediction of either 'Yes' or 'No'.")


@dataclass(frozen=True)
class TemplateSpec:
    """A prompt template as written in the contract file (and in a user's JSON template)."""

    name: str
    text: str
    yes: str
    no: str | None = None          # None: the score is the logit of `yes` alone
    instruction: str = ""          # the default filling of {instruction}
    add_bos: bool = False          # start with the tokenizer's BOS token (when it has one)

    def to_dict(self) -> dict:
        return asdict(self)


BUILTIN = {
    "qwen3-reranker": TemplateSpec(
        name="qwen3-reranker",
        text=(f"<|im_start|>system\n{_QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n"
              "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        yes="yes", no="no", instruction="Given a web search query, retrieve relevant passages that answer the query"),
    "bge-gemma": TemplateSpec(
        name="bge-gemma", text="A: {query}\nB: {passage}\n{instruction}", yes="Yes", no=None,
        instruction=_BGE_GEMMA_PROMPT, add_bos=True),
}


NAMES = (PAIR, *BUILTIN, CHAT)


def load_spec(template: str, tokenizer=None) -> TemplateSpec | None:
    """The template named `template` (`pair` -> None; `chat` rendered by `tokenizer`), or the one in a JSON file of
    that path."""
    if template == PAIR:
        return None
    if template in BUILTIN:
        return BUILTIN[template]
    if template == CHAT:
        return chat_spec(tokenizer)
    path = Path(template)
    if not template.endswith(".json"):
        raise InputError(template, f"unknown template (choose {', '.join(NAMES)} or a .json file)")
    if not path.is_file():
        raise InputError(path, "no such template file")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(path, f"not valid JSON ({e})") from None
    return spec_from_dict(raw, where=path)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, system: str, user: str) -> str:
    """The prompt text of a system and a user message in `tokenizer`'s chat template, up to the assistant's answer.

    A chat template that refuses a system message gets the instruction as the user message's first paragraph."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except jinja2.TemplateError:
        return tokenizer.apply_chat_template([{"role": "user", "content": f"{system}\n\n{user}"}], tokenize=False,
                                             add_generation_prompt=True)


def chat_spec(tokenizer) -> TemplateSpec:
    """The `chat` template of `tokenizer`: its chat template rendered around the slots, answering yes or no."""
    if tokenizer is None or not has_chat_template(tokenizer):
        raise InputError("--template chat", "the tokenizer has no chat template (choose "
                                            f"{', '.join(n for n in NAMES if n != CHAT)} or a .json file)")
    text = render_chat(tokenizer, "{instruction}", _CHAT_USER)
    if text.count("{instruction}") != 1:
        raise InputError("--template chat", "the tokenizer's chat template does not show the system message once")
    return spec_from_dict({"name": CHAT, "text": text, "yes": "yes", "no": "no", "instruction": _CHAT_INSTRUCTION},
                          where="--template chat")


def spec_from_dict(raw, where="template") -> TemplateSpec:
    """A TemplateSpec from JSON ({"template"|"text", "yes", "no", "instruction", "add_bos"}), checked."""
    if not isinstance(raw, dict):
        raise InputError(where, "a template is a JSON object")
    text = raw.get("text", raw.get("template"))
    if not isinstance(text, str):
        raise InputError(where, "template: missing or not a string (a text with {query} and {passage} slots)")
    for slot in SLOTS[1:]:
        if text.count(slot) != 1:
            raise InputError(where, f"template: needs exactly one {slot} slot, found {text.count(slot)}")
    if text.index("{query}") > text.index("{passage}"):
        raise InputError(where, "template: {query} must come before {passage}")
    if not isinstance(raw.get("yes"), str) or not (raw.get("no") is None or isinstance(raw["no"], str)):
        raise InputError(where, 'yes: a string is required ("no": a string or null)')
    return TemplateSpec(name=str(raw.get("name", Path(str(where)).stem)), text=text, yes=raw["yes"], no=raw.get("no"),
                        instruction=str(raw.get("instruction", "")), add_bos=bool(raw.get("add_bos", False)))


def answer_token_id(tokenizer, word: str, where: str) -> int:
    """The single token id that spells `word`; a word the tokenizer splits is an InputError."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(where, f"the answer string {word!r} is {len(ids)} tokens for this tokenizer, not one")
    return ids[0]


def _split_lead(segment: str) -> tuple[str, str]:
    """(segment without a trailing single space, that space or '')."""
    return (segment[:-1], " ") if segment.endswith(" ") and not segment.endswith("  ") else (segment, "")


@dataclass(frozen=True)
class PromptTemplate:
    """Token ids of the template around the query and passage; `build` has PairTemplate's interface."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(self, query: list[int], passage: list[int], max_len: int) -> tuple[list[int], list[int]]:
        """input_ids (and all-zero token types) of one prompt, passage cut first; the query is only cut when it
        alone would take more than half of the room (as PairTemplate does)."""
        problem = room_problem(self.num_special, max_len)
        if problem:
            raise ValueError(problem)
        room = max_len - self.num_special
        keep_query = min(len(query), max(room - len(passage), room // 2))
        ids = [*self.prefix, *query[:keep_query], *self.middle, *passage[:room - keep_query], *self.suffix]
        return ids, [0] * len(ids)


class PromptEncoder(PairEncoder):
    """PairEncoder's interface (token_ids / encode_ids / encode_texts / collate) for a prompt template.

    Batches are right-padded: position ids are the plain 0..n-1 of every pair, and the scored position is
    each row's last real token.
    """

    def __init__(self, tokenizer, max_len: int, spec: TemplateSpec, instruction: str | None = None):
        self.tokenizer, self.max_len, self.spec = tokenizer, max_len, spec
        text = spec.text.replace("{instruction}", spec.instruction if instruction is None else instruction)
        before_query, rest = text.split("{query}")
        between, after = rest.split("{passage}")
        before_query, self.query_lead = _split_lead(before_query)
        between, self.passage_lead = _split_lead(between)
        bos = [tokenizer.bos_token_id] if spec.add_bos and tokenizer.bos_token_id is not None else []
        pieces = [self._ids(t) for t in (before_query, between, after)]
        self.template = PromptTemplate(tuple(bos + pieces[0]), tuple(pieces[1]), tuple(pieces[2]))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.use_token_types = False

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _with_lead(self, ids: list[int], lead: str) -> list[int]:
        if not lead or not ids:
            return list(ids)
        return self._ids(lead + self.tokenizer.decode(ids, clean_up_tokenization_spaces=False))

    def encode_ids(self, query: list[int], passage: list[int]) -> tuple[list[int], list[int]]:
        return self.template.build(self._with_lead(query, self.query_lead),
                                   self._with_lead(passage, self.passage_lead), self.max_len)
