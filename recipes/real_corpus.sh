#!/usr/bin/env bash
# Stage 0 for a real corpus the user has (import it), then recipes/speech_stages.sh.
# Called by recipes/librispeech/run.sh and recipes/commonvoice/run.sh as
#   recipes/real_corpus.sh CORPUS [their options]
set -euo pipefail
corpus=$1
shift
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
  # shellcheck disable=SC2086  # --subsets is a space-separated list (LibriSpeech only)
  $FLEXI prepare "$corpus" --src "$src" --out "$data" ${subsets:+--subsets $subsets}
fi
if [ "$stop_stage" -ge 1 ]; then
  bash "$(dirname "$0")/../speech_stages.sh" --conf "$(dirname "$0")/$corpus/conf" --data "$data" --exp "$exp" \
    --stage "$(( stage > 1 ? stage : 1 ))" --stop-stage "$stop_stage" --profile "$profile" \
    --model "$source" --family "$family" "${pass[@]}"
fi
