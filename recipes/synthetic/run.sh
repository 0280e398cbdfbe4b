#!/usr/bin/env bash
# Flexi-LoRA vs static LoRA on the offline synthetic speech corpus (Whisper tiny.en).
#
#   recipes/synthetic/run.sh [--stage N] [--stop-stage N] [--size small|default|tiny|gpu]
#                            [--profile cpu|gpu] [--model whisper-tiny.en|whisper-base]
#                            [--steps N] [--data DIR] [--exp DIR] [--seed N] [--seeds 0,1,2]
#                            [--real DIR]   (a real-speech corpus every model is also evaluated on;
#                                            default: data/real from `flexispeech prepare realspeech`)
#                            [--runs "static_r16 flexi_nested"] [--device cuda|cpu] [--jobs N]
#                            [--gated "static_r16 flexi_benefit"] [--fixed-ranks "2"] [--strengths "0.5"] [--consensus "2 4 8 16"] [--joint "0"] [--joint-weight W]
#                            [--real-examples N|all] [--real-30s]
#                                           (see speech_stages.sh)
#
# --profile gpu is the full study on one GPU: the gpu corpus size (28,000 utterances, 4,480
# test of which half by unseen voices), 30-s windows, adapters in encoder and decoder,
# augmentation, every run of recipes/speech_stages.sh's gpu list, and the decisive pair
# (static_r16, flexi_benefit_nscale) repeated for each seed of --seeds (default 0,1,2).
#
# Stages (each only calls the flexispeech command line; finished outputs are skipped,
# so a re-run continues where it stopped; an evaluation asked again with other arguments,
# e.g. another --real-examples, runs again):
#   0  build the corpus                      4  train Flexi-LoRA (threshold, learned router)
#   1  cache signals + base-model decoding   5  train the inconsistent-routing ablation
#   2  evaluate the base model               6  evaluate every adapter on the test split
#   3  train static LoRA (rank 8, rank 16)   7  compare all runs side by side
#   (stage 6: the whole test split, at the adapters' window and at 30 s; see README.md)
# Stages 1-7 are recipes/speech_stages.sh, shared with the real-corpus recipes.
set -euo pipefail

stage=0
stop_stage=7
size=""
profile=cpu
model=whisper-tiny.en
seeds=""
data=""
exp=""
seed=0
FLEXI=${FLEXISPEECH:-flexispeech}
pass=()
real_given=0

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --seed) seed=$2; pass+=(--seed "$2"); shift 2 ;;
    --profile) profile=$2; pass+=("$1" "$2"); shift 2 ;;
    --model) model=$2; pass+=("$1" "$2"); shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --real) real_given=1; pass+=("$1" "$2"); shift 2 ;;
    --steps|--decisive|--runs|--device|--jobs|--gated|--fixed-ranks|--strengths|--consensus|--joint|--joint-weight|--real-examples) pass+=("$1" "$2"); shift 2 ;;
    --real-30s) pass+=("$1"); shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  cpu) size=${size:-small}; workers=2; exp=${exp:-exp/synthetic} ;;
  gpu) size=${size:-gpu}; workers=$(nproc); seeds=${seeds:-0,1,2}; exp=${exp:-exp/synthetic-gpu-$model} ;;
  *) echo "run.sh: --profile must be cpu or gpu" >&2; exit 2 ;;
esac
[ -n "$seeds" ] && pass+=(--seeds "$seeds")
data=${data:-data/synthetic-$size}

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  echo "== stage 0: corpus ($size) -> $data"
  $FLEXI prepare synthetic --out "$data" --size "$size" --seed "$seed" --workers "$workers"
fi
if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ] && [ "$real_given" = 0 ]; then
  # Real human speech next to the synthetic test split: the recordings Debian packages carry
  # (data_prep/install_system_deps.sh installs them); without them the recipe goes on.
  echo "== stage 0: real speech -> data/real"
  if ! $FLEXI prepare realspeech --out data/real; then
    echo "note: no real-speech packages installed: models are scored on the synthetic corpus only" >&2
  fi
fi
if [ "$real_given" = 0 ] && [ -f data/real/corpus.json ]; then pass+=(--real data/real); fi
if [ "$stop_stage" -ge 1 ]; then
  bash "$(dirname "$0")/../speech_stages.sh" --conf "$(dirname "$0")/conf" --data "$data" --exp "$exp" \
    --stage "$(( stage > 1 ? stage : 1 ))" --stop-stage "$stop_stage" "${pass[@]}"
fi
