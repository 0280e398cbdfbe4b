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

from flexispeech.atomic import nearest_existing
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


def _allows_none(annotation: object) -> bool:
    """Whether a parameter's annotation admits None (``"Path | None"``, ``Optional[Path]``)."""
    if isinstance(annotation, str):
        return "None" in [part.strip() for part in annotation.split("|")]
    return type(None) in typing.get_args(annotation)


def _arg_docs(doc: str) -> dict[str, str]:
    """Parameter help from the docstring's ``Args:`` section (Google style); a description
    continued on deeper-indented lines is joined (else ``--help`` shows it cut off)."""
    helps, inside, key = {}, False, None
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            inside = True
        elif inside and line and not line.startswith(" "):
            inside, key = False, None
        elif inside and ":" in line and line.startswith("    ") and not line.startswith("     "):
            key, text = line.strip().split(":", 1)
            key = key.split(" ")[0]
            helps[key] = text.strip()
        elif inside and key and line.startswith("     ") and line.strip():
            helps[key] += " " + line.strip()
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
        if required and _allows_none(param.annotation):
            # "src: Path | None" with no default: positional in Python, but None is allowed
            # (LibriSpeech's --src is not needed with --hub-id): an optional flag here
            required, default = False, None
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


def check_out_dir(out: Path) -> None:
    """A one-line error when ``out``, or the nearest of its parents that exists, is not a
    directory. Checked here once for every corpus: each importer would fail deep in mkdir
    instead, with a traceback."""
    path = nearest_existing(out)
    if not path.is_dir():
        where = "exists" if path == out else f"is inside {path}, which exists"
        raise FlexispeechError(f"{out}: {where} and is not a directory (--out is the directory to write)")


def run(args: argparse.Namespace) -> int:
    func = _resolve(args.corpus)
    options = vars(corpus_parser(args.corpus, func).parse_args(args.options))
    if options.get("out") is not None:
        check_out_dir(Path(options["out"]))
    out = func(**options)
    from flexispeech.data.corpus import read_corpus_info
    from flexispeech.data.text_format import is_text_task, read_text_task_info

    if out is not None and (Path(out) / "corpus.json").is_file():
        info = read_corpus_info(Path(out))
        counts = ", ".join(f"{s} {n}" for s, n in info["splits"].items())
        print(f"{out}: {info['hours']:.2f} h of audio ({counts})")
    elif out is not None and is_text_task(Path(out)):
        info = read_text_task_info(Path(out))
        counts = ", ".join(f"{s} {n}" for s, n in info["splits"].items())
        print(f"{out}: text task {info['name']}, {sum(info['splits'].values())} examples ({counts})")
    return 0
