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
corpus=librispeech

stage=0
stop_stage=7
src=""
subsets=""
model=tiny.en
profile=gpu
data=""
exp=""
FLEXI=${FLEXISPEECH:-flexispeech}
pass=()

while [ $# -gt 0 ]; do
  case "$1" in
    --src) src=$2; shift 2 ;;
    --subsets) subsets=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --steps|--seed) pass+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
data=${data:-data/$corpus}
exp=${exp:-exp/$corpus/$model}
family=whisper
case "$model" in
  tiny.en) source=whisper-tiny.en ;;
  base) source=whisper-base ;;
  small) source=openai/whisper-small ;;
  wav2vec2) source=facebook/wav2vec2-base-960h; family=wav2vec2 ;;
  *) source=$model ;;
esac

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  [ -n "$src" ] || { echo "run.sh: stage 0 needs --src DIR (your local copy of the corpus)" >&2; exit 2; }
  echo "== stage 0: import $corpus from $src -> $data"
  # shellcheck disable=SC2086  # --subsets is a space-separated list
  $FLEXI prepare "$corpus" --src "$src" --out "$data" ${subsets:+--subsets $subsets}
fi
if [ "$stop_stage" -ge 1 ]; then
  bash "$(dirname "$0")/../speech_stages.sh" --conf "recipes/$corpus/conf" --data "$data" --exp "$exp" \
    --stage "$(( stage > 1 ? stage : 1 ))" --stop-stage "$stop_stage" --profile "$profile" \
    --model "$source" --family "$family" "${pass[@]}"
fi
