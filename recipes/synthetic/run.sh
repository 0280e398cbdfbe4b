#!/usr/bin/env bash
# Flexi-LoRA vs static LoRA on the offline synthetic speech corpus (Whisper tiny.en).
#
#   recipes/synthetic/run.sh [--stage N] [--stop-stage N] [--size small|default|tiny]
#                            [--profile cpu|gpu] [--steps N] [--data DIR] [--exp DIR]
#
# Stages (each only calls the flexispeech command line; finished outputs are skipped,
# so a re-run continues where it stopped):
#   0  build the corpus                      4  train Flexi-LoRA (threshold, learned router)
#   1  cache signals + base-model decoding   5  train the inconsistent-routing ablation
#   2  evaluate the base model               6  evaluate every adapter on the test split
#   3  train static LoRA (rank 8, rank 16)   7  compare all runs side by side
set -euo pipefail

stage=0
stop_stage=7
size=small
profile=cpu
steps=""
data=""
exp=exp/synthetic
seed=0
FLEXI=${FLEXISPEECH:-flexispeech}
conf=recipes/synthetic/conf
runs_static="static_r8 static_r16"
runs_flexi="flexi_threshold flexi_learned"
runs_ablation="inconsistent"

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
data=${data:-data/synthetic-$size}

case "$profile" in
  # CPU: 10-s encoder window, encoder frozen and cached, adapters on the decoder (README).
  cpu) audio_ctx=500; overrides=() ;;
  # GPU: the full 30-s window, adapters on encoder and decoder, bf16.
  gpu) audio_ctx=1500; overrides=(model.audio_ctx=null model.cache_encoder_layers=0 data.max_duration=null
                                  train.mixed_precision=bf16 train.batch_size=32) ;;
  *) echo "run.sh: --profile must be cpu or gpu" >&2; exit 2 ;;
esac
overrides+=(data.corpus="$data" seed="$seed")
[ -n "$steps" ] && overrides+=(train.max_steps="$steps")

step() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
log() { echo "== stage $1: $2"; }

train_run() {  # train one run unless it already finished; --resume continues a killed one
  local name=$1
  if [ -f "$exp/$name/train_summary.json" ]; then echo "$name: already trained"; return; fi
  $FLEXI train --config "$conf/$name.yaml" output_dir="$exp/$name" "${overrides[@]}" --resume
}

if step 0; then
  log 0 "corpus ($size) -> $data"
  $FLEXI prepare synthetic --out "$data" --size "$size" --seed "$seed"
fi

if step 1; then
  log 1 "signals and base-model decoding"
  $FLEXI signals "$data" --model whisper-tiny.en --audio-ctx "$audio_ctx" --splits train,test
fi

if step 2; then
  log 2 "base model on the test split"
  [ -f "$exp/base/eval_test/results.json" ] || \
    $FLEXI eval --data "$data" --model whisper-tiny.en --audio-ctx "$audio_ctx" --name base --out "$exp/base/eval_test"
fi

if step 3; then log 3 "static LoRA"; for r in $runs_static; do train_run "$r"; done; fi
if step 4; then log 4 "Flexi-LoRA"; for r in $runs_flexi; do train_run "$r"; done; fi
if step 5; then log 5 "ablation"; for r in $runs_ablation; do train_run "$r"; done; fi

if step 6; then
  log 6 "evaluate adapters"
  for r in $runs_static $runs_flexi $runs_ablation; do
    [ -f "$exp/$r/eval_test/results.json" ] || $FLEXI eval --data "$data" --adapter "$exp/$r/adapter" --split test
  done
fi

if step 7; then
  log 7 "compare"
  results=("$exp/base/eval_test")
  for r in $runs_static $runs_flexi $runs_ablation; do results+=("$exp/$r/eval_test"); done
  $FLEXI compare "${results[@]}" --out "$exp"
  echo "table: $exp/compare.md; plots: $exp/wer_by_snr.png, $exp/ranks.png"
fi
