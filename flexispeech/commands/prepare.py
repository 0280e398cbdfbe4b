"""``flexispeech prepare NAME [options]``: build or import a corpus into the corpus format.

Corpora are registered in ``data_prep.CORPORA`` (name -> ``module:prepare_<name>``). Each
corpus's options come from its function's signature, so importers with other parameters
(``--src DIR`` for an existing corpus, say) need no change here: a parameter ``foo_bar:
int = 3`` becomes ``--foo-bar N`` (default 3); one without a default is required.
``flexispeech prepare NAME --help`` lists them.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import typing
from pathlib import Path

from flexispeech.errors import FlexispeechError

HELP = "build or import a corpus (flexispeech prepare NAME --help for its options)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from data_prep import CORPORA

    parser.add_argument("corpus", metavar="NAME", help=f"one of: {', '.join(CORPORA)}")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the corpus's own options")


def _resolve(name: str):
    from data_prep import CORPORA

    if name not in CORPORA:
        raise FlexispeechError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    module_name, func_name = CORPORA[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def _converter(annotation: object, default: object):
    """The argparse ``type`` for a parameter (its annotation, or its default's type)."""
    if isinstance(annotation, str):  # postponed annotations: "Path", "int", "str | None"
        for name, conv in (("Path", Path), ("int", int), ("float", float), ("bool", bool)):
            if annotation.split("|")[0].strip() == name:
                return conv
        if annotation.startswith(("list[", "Sequence[", "tuple[", "Iterable[")):
            return "list"
        return str
    if annotation in (Path, int, float, bool, str):
        return annotation
    if typing.get_origin(annotation) is list:
        return "list"
    return type(default) if default not in (None, inspect.Parameter.empty) else str


def _arg_docs(doc: str) -> dict[str, str]:
    """Parameter help from the docstring's ``Args:`` section (Google style)."""
    helps, inside = {}, False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            inside = True
        elif inside and line and not line.startswith(" "):
            inside = False
        elif inside and ":" in line and line.startswith("    ") and not line.startswith("     "):
            key, text = line.strip().split(":", 1)
            helps[key.split(" ")[0]] = text.strip()
    return helps


def corpus_parser(name: str, func) -> argparse.ArgumentParser:
    """An argument parser built from ``func``'s signature (one ``--option`` per parameter)."""
    doc = inspect.getdoc(func) or ""
    helps = _arg_docs(doc)
    parser = argparse.ArgumentParser(prog=f"flexispeech prepare {name}", description=doc.split("\n\n")[0])
    for param in inspect.signature(func).parameters.values():
        flag = "--" + param.name.replace("_", "-")
        default = param.default
        conv = _converter(param.annotation, default)
        required = default is inspect.Parameter.empty
        shown = helps.get(param.name, param.name) + ("" if required else f" (default: {default})")
        if conv is bool:
            parser.add_argument(
                flag,
                dest=param.name,
                action=argparse.BooleanOptionalAction,
                default=default if not required else False,
                help=shown,
            )
        elif conv == "list":
            parser.add_argument(
                flag,
                dest=param.name,
                nargs="+",
                required=required,
                default=None if required else default,
                help=shown,
            )
        else:
            parser.add_argument(
                flag,
                dest=param.name,
                type=conv,
                required=required,
                default=None if required else default,
                metavar=param.name.upper(),
                help=shown,
            )
    return parser


def run(args: argparse.Namespace) -> int:
    func = _resolve(args.corpus)
    options = vars(corpus_parser(args.corpus, func).parse_args(args.options))
    if options.get("out") is not None and Path(options["out"]).exists() and not Path(options["out"]).is_dir():
        # checked here once for every corpus: each importer would fail deep in mkdir instead
        raise FlexispeechError(
            f"{options['out']}: exists and is not a directory (--out is the directory to write)"
        )
    out = func(**options)
    from flexispeech.data.corpus import read_corpus_info

    if out is not None and (Path(out) / "corpus.json").is_file():
        info = read_corpus_info(Path(out))
        counts = ", ".join(f"{s} {n}" for s, n in info["splits"].items())
        print(f"{out}: {info['hours']:.2f} h of audio ({counts})")
    return 0
