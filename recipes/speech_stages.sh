#!/usr/bin/env bash
# Stages 1-7 shared by the speech recipes (synthetic, librispeech, commonvoice): signals,
# base evaluation, static LoRA, Flexi-LoRA, the ablation, evaluation, comparison.
# A recipe's run.sh builds or imports its corpus (stage 0) and then calls this script:
#
#   recipes/speech_stages.sh --conf DIR --data DIR --exp DIR [--stage N] [--stop-stage N]
#       [--profile cpu|gpu] [--model SOURCE] [--family whisper|wav2vec2] [--steps N] [--seed N]
#
# Every stage only calls the flexispeech command line; finished outputs are skipped, so a
# re-run continues where it stopped (`train --resume` picks up a killed run).
set -euo pipefail

stage=1
stop_stage=7
profile=cpu
model=whisper-tiny.en
family=whisper
steps=""
seed=0
conf=""
data=""
exp=""
FLEXI=${FLEXISPEECH:-flexispeech}
runs_static="static_r8 static_r16"
runs_flexi="flexi_threshold flexi_learned"
runs_ablation="inconsistent"

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --family) family=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --conf) conf=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "speech_stages.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$conf" ] || [ -z "$data" ] || [ -z "$exp" ]; then
  echo "speech_stages.sh: --conf, --data and --exp are required" >&2; exit 2
fi

case "$profile" in
  # CPU: 10-s encoder window, encoder frozen and cached, adapters on the decoder.
  cpu) audio_ctx=500; overrides=() ;;
  # GPU: the full 30-s window, adapters on encoder and decoder, bf16.
  gpu) audio_ctx=1500; overrides=(model.audio_ctx=null model.cache_encoder_layers=0 data.max_duration=null
                                  train.mixed_precision=bf16 train.batch_size=32) ;;
  *) echo "speech_stages.sh: --profile must be cpu or gpu" >&2; exit 2 ;;
esac
overrides+=(data.corpus="$data" seed="$seed" model.source="$model" model.family="$family")
if [ "$family" != whisper ]; then  # the encoder window and cache are Whisper's
  overrides+=(model.audio_ctx=null model.cache_encoder_layers=0 adapter.target_modules=null)
fi
[ -n "$steps" ] && overrides+=(train.max_steps="$steps")
ctx_args=(--audio-ctx "$audio_ctx")
[ "$family" = whisper ] || ctx_args=()

step() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
log() { echo "== stage $1: $2"; }

train_run() {  # train one run unless it already finished; --resume continues a killed one
  local name=$1
  if [ -f "$exp/$name/train_summary.json" ]; then echo "$name: already trained"; return; fi
  $FLEXI train --config "$conf/$name.yaml" output_dir="$exp/$name" "${overrides[@]}" --resume
}

if step 1; then
  log 1 "signals and base-model decoding"
  # The decoder-confidence proxy comes from Whisper tiny.en whatever model is adapted.
  $FLEXI signals "$data" --model whisper-tiny.en --audio-ctx "$audio_ctx" --splits train,test
fi

if step 2; then
  log 2 "base model on the test split"
  [ -f "$exp/base/eval_test/results.json" ] || \
    $FLEXI eval --data "$data" --model "$model" --family "$family" "${ctx_args[@]}" --name base --out "$exp/base/eval_test"
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
