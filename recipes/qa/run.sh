#!/usr/bin/env bash
# Flexi-LoRA vs static LoRA on short-answer QA over a passage (1-3 hops; EM and token F1), SmolLM2-135M-Instruct.
#
#   recipes/qa/run.sh [--profile cpu|gpu] [--stage N] [--stop-stage N] [--size SIZE]
#                        [--steps N] [--data DIR] [--exp DIR] [--import DIR] [--seed N]
#
# Stages (each only calls the flexispeech command line; finished outputs are skipped):
#   0  build the task (or import: --import DIR)  4  train Flexi-LoRA (threshold, learned)
#   1  cache signals + base-model answers        5  train the inconsistent-routing ablation
#   2  evaluate the base model                   6  evaluate every adapter on the test split
#   3  train static LoRA (rank 4, rank 8)        7  compare all runs side by side
# --profile cpu (default): --size cpu, about 48 min on 2 cores; --profile gpu: one CUDA
# device, --size gpu (3000 training / 500 test questions), and in stage 4 also
# flexi_benefit_nscale (routing by benefit: its router fit on the validation split by
# `flexispeech calibrate` before it is evaluated). Sizes: tiny (a smoke run),
# cpu, small, gpu, default (5000 / 500). Outputs: data/qa-SIZE, exp/qa-SIZE.
# --import DIR imports the SQuAD json files (train-v*.json, dev-v*.json) in DIR
# instead of generating questions (flexi_benefit_nscale is then left out: no validation split).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,18p' "$0"; exit 0 ;; esac
exec bash "$(dirname "$0")/../text_stages.sh" qa "$@"
