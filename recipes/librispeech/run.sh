#!/usr/bin/env bash
# Flexi-LoRA vs static LoRA on LibriSpeech, for users who have a local copy.
#
#   recipes/librispeech/run.sh --src DIR [--subsets "train-clean-100 dev-clean test-clean"]
#       [--model tiny.en|base|small|wav2vec2|SOURCE] [--profile gpu|cpu] [--stage N] [--stop-stage N]
#       [--steps N] [--data DIR] [--exp DIR]
#
# Stage 0 imports LibriSpeech from DIR (the folder holding LibriSpeech/, or LibriSpeech/
# itself); stages 1-7 are recipes/speech_stages.sh: signals, base evaluation, static LoRA
# (r=8, r=16), Flexi-LoRA (threshold and learned routers), the inconsistent-routing
# ablation, evaluation on the test split, comparison. --model presets: tiny.en and base are
# the bundled offline models; small (openai/whisper-small) and wav2vec2
# (facebook/wav2vec2-base-960h) need a model hub.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,12p' "$0"; exit 0 ;; esac
exec bash "$(dirname "$0")/../real_corpus.sh" librispeech "$@"
