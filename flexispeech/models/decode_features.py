"""Decoding inputs made in two halves: reading in the loader's workers, log-mel on the GPU.

``flexispeech eval``, ``calibrate`` and ``signals`` decode whole splits through
``data.loading.load_batches``, whose workers used to make each batch's log-mel on the host
(``family.collate``). On a GPU that is the bottleneck: a 30-s clip's log-mel costs the
host more than the clip's decoding costs the GPU, so in the GPU study the encoder pass
over 20,720 training clips ran at ~110 clips/s (190 s) with its workers busy and the GPU
idle, and every evaluation and calibration was bound the same way.

Training already makes Whisper's features on the GPU (``whisper_features.log_mel``, held
by tests to the extractor's output). ``DecodeFeatures`` does the same for decoding: its
``collate`` (in the workers) only pads the clips, and ``finish`` (in the decoding process)
makes ``input_features`` and ``num_frames`` on the model's device. Where that does not
apply it is the family's own collate and ``finish`` passes the batch through: a model on
the CPU (the CPU numbers stay those of the host extractor), a family other than Whisper,
an extractor ``log_mel`` does not reproduce, or a batch holding a clip longer than the
encoder window (long-form decoding keeps whole clips, which ``log_mel`` would cut).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flexispeech.models.example import Example
from flexispeech.models.whisper import HOP_LENGTH


@dataclass(frozen=True)
class DecodeFeatures:
    """A batch's decoding inputs: ``collate`` in loader workers, ``finish`` where the model is.

    Args:
        family: the model family (``family.collate`` is the host path).
        processor: the family's processor.
        on_device: make Whisper's log-mel in ``finish`` (``decode_features`` decides).
    """

    family: Any
    processor: Any
    on_device: bool

    def collate(self, examples: Sequence[Example]) -> dict[str, Any]:
        """``family.collate(train=False)``'s inputs, or on the device path ``audio`` [B, T]
        float32 (zero padded) and ``lengths`` [B] long, for ``finish``."""
        window = int(getattr(self.processor.feature_extractor, "n_samples", 0)) if self.on_device else 0
        if self.on_device and all(ex.audio is not None and len(ex.audio) <= window for ex in examples):
            rows = [torch.as_tensor(np.asarray(ex.audio, dtype=np.float32)) for ex in examples]
            lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
            return {"audio": torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), "lengths": lengths}
        return self.family.collate(self.processor, list(examples), train=False)

    def finish(self, inputs: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
        """``collate``'s output as the model takes it: on the device path ``input_features``
        [B, n_mels, frames] on ``device`` and ``num_frames`` [B]; else ``inputs`` unchanged."""
        if "audio" not in inputs:
            return inputs
        from flexispeech.models.whisper_features import log_mel

        audio = inputs["audio"].to(device, non_blocking=True)
        features = log_mel(self.processor.feature_extractor, audio)
        num_frames = torch.clamp(inputs["lengths"] // HOP_LENGTH, max=features.shape[-1]).long()
        return {"input_features": features, "num_frames": num_frames}


def decode_features(family: Any, processor: Any, device: torch.device | str) -> DecodeFeatures:
    """The ``DecodeFeatures`` of decoding ``family`` on ``device``: the log-mel on the device
    for Whisper on a GPU whose extractor ``whisper_features.log_mel`` reproduces."""
    from flexispeech.models.whisper_features import device_log_mel_supported

    on_device = (
        torch.device(device).type == "cuda"
        and getattr(family, "name", "") == "whisper"
        and device_log_mel_supported(getattr(processor, "feature_extractor", None))
    )
    return DecodeFeatures(family, processor, on_device)
