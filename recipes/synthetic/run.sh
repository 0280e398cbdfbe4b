#!/usr/bin/env bash
# Flexi-LoRA vs static LoRA on the offline synthetic speech corpus (Whisper tiny.en).
#
#   recipes/synthetic/run.sh [--stage N] [--stop-stage N] [--size small|default|tiny]
#                            [--profile cpu|gpu] [--steps N] [--data DIR] [--exp DIR] [--seed N]
#                            [--real DIR]   (a real-speech corpus every model is also evaluated on)
#
# Stages (each only calls the flexispeech command line; finished outputs are skipped,
# so a re-run continues where it stopped):
#   0  build the corpus                      4  train Flexi-LoRA (threshold, learned router)
#   1  cache signals + base-model decoding   5  train the inconsistent-routing ablation
#   2  evaluate the base model               6  evaluate every adapter on the test split
#      (the whole test split, at the adapters' window and at 30 s; see README.md)
#   3  train static LoRA (rank 8, rank 16)   7  compare all runs side by side
# Stages 1-7 are recipes/speech_stages.sh, shared with the real-corpus recipes.
set -euo pipefail

stage=0
stop_stage=7
size=small
data=""
exp=exp/synthetic
seed=0
FLEXI=${FLEXISPEECH:-flexispeech}
pass=()

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --seed) seed=$2; pass+=(--seed "$2"); shift 2 ;;
    --profile|--steps|--real) pass+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
data=${data:-data/synthetic-$size}

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  echo "== stage 0: corpus ($size) -> $data"
  $FLEXI prepare synthetic --out "$data" --size "$size" --seed "$seed"
fi
if [ "$stop_stage" -ge 1 ]; then
  bash "$(dirname "$0")/../speech_stages.sh" --conf recipes/synthetic/conf --data "$data" --exp "$exp" \
    --stage "$(( stage > 1 ? stage : 1 ))" --stop-stage "$stop_stage" "${pass[@]}"
fi
