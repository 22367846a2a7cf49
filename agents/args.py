"""Command lines from dataclasses (cleanrl style): each field a ``--flag``, its docs in its metadata.

A field's ``metadata["help"]`` is its help text and ``metadata["metavar"]`` (optional) its
placeholder; ``metadata["positional"]`` makes it a positional argument (optional: its default
applies when it is left out). ``bool`` fields become ``--flag/--no-flag``, ``list[...]`` fields take one or
more values (a repeated flag adds to them; the first replaces the default), ``int`` and ``float`` fields (optionally ``| None``) are converted, the rest are
strings.
"""

from __future__ import annotations

import argparse
import dataclasses

_CONVERTERS = {"int": int, "int | None": int, "float": float, "float | None": float}


class _Extend(argparse.Action):
    """``--flag a b --flag c`` gives ``[a, b, c]``: argparse's ``"store"`` would keep only ``[c]``, and its
    ``"extend"`` would add to the default instead of replacing it."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001, ARG002  (argparse's signature)
        current = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*([] if current is self.default else current), *values])


def dataclass_parser(args_class: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with one option per field of the dataclass ``args_class``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in dataclasses.fields(args_class):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="?", default=f.default, metavar=f.metadata.get("metavar", f.name.upper()), help=help_text)
        elif f.type == "bool":
            parser.add_argument(flag, default=f.default, action=argparse.BooleanOptionalAction, help=help_text)
        elif str(f.type).startswith("list"):
            parser.add_argument(flag, nargs="+", action=_Extend, default=f.default_factory(), metavar=f.metadata.get("metavar"), help=help_text)  # type: ignore[misc]
        else:
            kind = _CONVERTERS.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default, metavar=f.metadata.get("metavar"), help=help_text)
    return parser
