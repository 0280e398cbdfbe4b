"""Corpus preparation: one module per corpus, each with ``prepare_<corpus>(...)``.

``CORPORA`` maps the name used by ``flexispeech prepare NAME`` to ``module:function``.
"""

CORPORA: dict[str, str] = {
    "synthetic": "data_prep.synthetic:prepare_synthetic",
    "librispeech": "data_prep.librispeech:prepare_librispeech",
    "commonvoice": "data_prep.commonvoice:prepare_commonvoice",
    "folder": "data_prep.folder:prepare_folder",
    "realspeech": "data_prep.realspeech:prepare_realspeech",
    "math": "data_prep.math:prepare_math",
    "gsm8k": "data_prep.math:prepare_gsm8k",
    "qa": "data_prep.qa:prepare_qa",
    "squad": "data_prep.qa:prepare_squad",
}
