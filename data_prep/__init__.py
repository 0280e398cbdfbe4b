"""Corpus preparation: one module per corpus, each with ``prepare_<corpus>(...)``.

``CORPORA`` maps the name used by ``flexispeech prepare NAME`` to ``module:function``.
"""

CORPORA: dict[str, str] = {}
