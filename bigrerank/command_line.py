"""The argument parser every subcommand shares.

Usage lines name the subcommand (`bigrerank rerank …`), every flag's help shows its default and choices, and a
user mistake ends as one line `bigrerank <command>: error: …` with exit code 2: argparse's own errors (an unknown
flag, a value outside the choices) exit from the parser, a value an argument dataclass refuses raises UsageError
for `bigrerank.cli.main` to print.
"""
from __future__ import annotations

import argparse
import sys

from transformers import HfArgumentParser

from .errors import UsageError


def at_least(owner, names, low, inclusive: bool = True) -> None:
    """ValueError naming the first flag of `names` (None: unset) below `low`, or not above it unless `inclusive`;
    for an argument dataclass's `__post_init__`."""
    for name in names:
        value = getattr(owner, name)
        if value is not None and not (value >= low if inclusive else value > low):  # NaN fails both
            raise ValueError(f"--{name} must be {'at least' if inclusive else 'above'} {low}, got {value}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default, or "(required)"; descriptions kept as written."""

    def _get_help_string(self, action):
        if action.required:
            return f"{action.help or ''} (required)"
        return super()._get_help_string(action)


class CommandParser(HfArgumentParser):
    """`HfArgumentParser` for `bigrerank <command>`: one-line errors, dataclass `ValueError`s included."""

    def __init__(self, dataclass_types, command: str, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, prog=f"bigrerank {command}", **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse(self, argv: list[str] | None = None) -> tuple:
        """The argument dataclasses; a value they refuse (their `__post_init__`'s ValueError) or an argument none of
        them takes raises UsageError, which `bigrerank.cli.main` prints as one line (exit code 2)."""
        try:
            *parsed, unknown = self.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else list(argv),
                                                                return_remaining_strings=True)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return tuple(parsed)
