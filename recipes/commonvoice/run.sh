#!/usr/bin/env bash
# Flexi-LoRA vs static LoRA on a Common Voice language folder, for users who have one.
#
#   recipes/commonvoice/run.sh --src DIR [--model tiny.en|base|small|wav2vec2|SOURCE]
#       [--profile gpu|cpu] [--stage N] [--stop-stage N] [--steps N] [--data DIR] [--exp DIR]
#
# Stage 0 imports DIR (clips/*.mp3, train.tsv, dev.tsv, test.tsv); clips that are missing or
# unreadable are reported, skipped and counted. Stages 1-7 are recipes/speech_stages.sh (see
# recipes/librispeech/run.sh for the list and the --model presets).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,9p' "$0"; exit 0 ;; esac
exec bash "$(dirname "$0")/../real_corpus.sh" commonvoice "$@"
