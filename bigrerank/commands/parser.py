"""The argument parser every subcommand shares, and the one way a command refuses its flags.

Usage lines name the subcommand (`bigrerank rerank …`) and every flag's help shows its default and choices. A
command's argument dataclasses check their flags in `__post_init__` (each flag alone and how they go together) and
raise `UsageError`; argparse's own refusals (an unknown flag, a value outside the choices) raise it too. Problems
found in files, models or the machine are `InputError`s, raised where they are found. `bigrerank.cli.main` prints
either as one line `bigrerank <command>: error: …` and exits with code 2.
"""
from __future__ import annotations

import argparse
import sys

from transformers import HfArgumentParser
from transformers.utils.hub import convert_file_size_to_int

from ..ds_config import DTYPES
from ..errors import UsageError


def at_least(owner, names, low, inclusive: bool = True) -> None:
    """UsageError naming the first flag of `names` (None: unset) below `low`, or not above it unless `inclusive`."""
    for name in names:
        value = getattr(owner, name)
        if value is not None and not (value >= low if inclusive else value > low):  # NaN fails both
            raise UsageError(f"--{name} must be {'at least' if inclusive else 'above'} {low}, got {value}")


def one_word(owner, name: str) -> None:
    """UsageError unless flag `name` is one word without whitespace (a TREC run's last column)."""
    value = getattr(owner, name)
    if not value or len(value.split()) != 1 or value != value.strip():
        raise UsageError(f"--{name} must be one word without whitespace, got {value!r}")


def check_packing_flags(args) -> None:
    """--pack_len goes with --padding_free and holds the longest pair (train's or rerank's arguments)."""
    if args.pack_len is not None and not args.padding_free:
        raise UsageError("--pack_len: needs --padding_free")
    if args.pack_len is not None and args.max_len is not None and args.pack_len < args.max_len:
        raise UsageError(f"--pack_len must be at least --max_len ({args.max_len}), got {args.pack_len}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default, or "(required)"; descriptions kept as written."""

    def _get_help_string(self, action):
        if action.required:
            return f"{action.help or ''} (required)"
        return super()._get_help_string(action)


class CommandParser(HfArgumentParser):
    """`HfArgumentParser` for `bigrerank <command>`: every refusal is a UsageError."""

    def __init__(self, dataclass_types, command: str, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, prog=f"bigrerank {command}", **kwargs)

    def error(self, message: str):
        raise UsageError(message)

    def parse(self, argv: list[str] | None = None) -> tuple:
        """The argument dataclasses of `argv`; UsageError for a flag they or argparse refuse, or one none takes."""
        *parsed, unknown = self.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else list(argv),
                                                            return_remaining_strings=True)
        if unknown:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
        return tuple(parsed)


EXPORT_DTYPES = tuple(DTYPES)  # --export_dtype of consolidate and train


def shard_size(text: str) -> int:
    """--max_shard_size in bytes (transformers' notation); a usage error when it is not one."""
    try:
        size = convert_file_size_to_int(text.strip())
    except ValueError:
        size = 0
    if size <= 0:
        raise UsageError(f"--max_shard_size: '{text}' is not a size such as 5GB, 500MB or 2GiB")
    return size
