"""What every router shares: the ``Router`` base (ranks, signals read, the dict form and its
registry of kinds) and the helpers that turn signals into features.

Signals are a mapping ``name -> tensor [batch]`` of floats (e.g. ``duration``,
``snr_db``, ``proxy``; a vector signal such as the pooled encoder ``embedding`` is
[batch, d]). The routers themselves are in ``lora.router`` (fixed, random, threshold) and
``lora.learned_router``; importing ``lora.router`` registers every built-in kind for
``Router.from_dict``. No transformers import here on purpose: routers load anywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from flexispeech.errors import ConfigError

Signals = Mapping[str, torch.Tensor]


def batch_size(signals: Signals, n: int | None = None) -> int:
    """The number of examples in a batch of signals (all entries must agree).

    ``n``: the batch size as the caller knows it (a router call's ``n``); it must agree
    with the signals, and it is the answer when there are none (the rows of a corpus whose
    signals are not cached, routed by a router that reads none)."""
    sizes = {name: int(torch.as_tensor(v).shape[0]) for name, v in signals.items()}
    if n is not None:
        sizes = {**sizes, "(batch)": int(n)}
    if not sizes:
        raise ConfigError("signals are empty: a router needs at least one signal per example")
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"signals disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def feature_matrix(signals: Signals, features: Sequence[str]) -> torch.Tensor:
    """Stack the named signals into [batch, n_columns] float32; names the missing ones.

    A scalar signal ([batch]) is one column, a vector signal ([batch, d], e.g. the pooled
    encoder ``embedding``) is ``d`` columns, in the order of ``features``."""
    missing = [f for f in features if f not in signals]
    if missing:
        raise ConfigError(f"router needs signals {missing}; the batch has {sorted(signals)}")
    columns = [torch.as_tensor(signals[f], dtype=torch.float32) for f in features]
    return torch.cat([c.reshape(c.shape[0], -1) for c in columns], dim=1)


def feature_widths(signals: Signals, features: Sequence[str]) -> list[int]:
    """Columns per feature in ``feature_matrix`` (1 for a scalar signal, d for [batch, d])."""
    feature_matrix(signals, features)  # names any missing signal
    return [int(torch.as_tensor(signals[f])[0].numel()) for f in features]


def validate_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    """``ranks`` as a sorted tuple of distinct ints >= 0 (ConfigError otherwise)."""
    ranks = tuple(int(r) for r in ranks)
    if not ranks or list(ranks) != sorted(set(ranks)) or ranks[0] < 0:
        raise ConfigError(f"router ranks must be sorted, distinct and >= 0, got {list(ranks)}")
    return ranks


class Router(ABC):
    """What every router has: ``ranks`` it routes to, the ``signal_names`` it reads, a call
    ``signals -> ranks [batch]``, and a dict form (``to_dict`` / ``Router.from_dict``).

    A subclass sets ``kind`` (the ``"type"`` of its dict form, which registers it) and
    keeps its constructor's arguments as the other keys of ``to_dict``.
    """

    kind: ClassVar[str]
    ranks: tuple[int, ...]
    """The ranks this router returns, sorted ascending."""
    _kinds: ClassVar[dict[str, type[Router]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            Router._kinds[kind] = cls

    @property
    @abstractmethod
    def signal_names(self) -> tuple[str, ...]:
        """The signals this router reads (empty: it routes without looking at the input)."""

    @abstractmethod
    def __call__(self, signals: Signals, n: int | None = None) -> torch.Tensor:
        """Ranks [batch] int64 (values from ``ranks``) for signals ``name -> [batch]``.

        ``n``: the batch size, which a router that reads no signal (fixed, random) needs
        when ``signals`` is empty; given beside signals, it must agree with them."""

    @abstractmethod
    def describe(self) -> str:
        """One line for logs and reports, e.g. ``FixedRouter(rank=8)``."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form: ``{"type": kind, ...}``; ``Router.from_dict`` inverts it."""

    def neutral_value(self, name: str) -> float:
        """The value of signal ``name`` that tells this router nothing about an example (the
        mean it standardises that signal by, so its z-score is 0; 0.0 without one): what
        to give for a signal that is not computed, e.g. the proxy in streaming."""
        return 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Router:
        """Rebuild a router from its ``to_dict()`` form (an adapter's ``router.json``)."""
        fields = dict(data)
        kind = fields.pop("type", None)
        router_cls = Router._kinds.get(kind)  # type: ignore[arg-type]
        if router_cls is None:
            raise ConfigError(f"unknown router type {kind!r}; expected one of {sorted(Router._kinds)}")
        if not issubclass(router_cls, cls):
            raise ConfigError(f"a {kind!r} router is not a {cls.__name__}")
        try:
            return router_cls._from_fields(fields)
        except TypeError as err:  # an unknown or missing key
            raise ConfigError(f"{kind} router: {err}") from None

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Router:
        """The router of a ``to_dict`` form without its ``type`` (constructor keywords)."""
        return cls(**fields)
