#!/usr/bin/env bash
# Flexi-LoRA vs static LoRA on math word problems (graded 1-6 steps; score: the final number), SmolLM2-135M-Instruct.
#
#   recipes/math/run.sh [--stage N] [--stop-stage N] [--size tiny|small|default]
#                        [--steps N] [--data DIR] [--exp DIR] [--import DIR] [--device DEV]
#
# Stages (each only calls the flexispeech command line; finished outputs are skipped):
#   0  build the task (or import: --import DIR)  4  train Flexi-LoRA (threshold, learned)
#   1  cache signals + base-model answers        5  train the inconsistent-routing ablation
#   2  evaluate the base model                   6  evaluate every adapter on the test split
#   3  train static LoRA (rank 4, rank 8)        7  compare all runs side by side
# --import DIR imports the GSM8K jsonl files (train.jsonl, test.jsonl) in DIR
# instead of generating questions. Torch uses one thread unless OMP_NUM_THREADS says
# otherwise: on a small shared CPU a thread pool's spin-waits cost more than they give.
set -euo pipefail

stage=0
stop_stage=7
size=tiny
steps=""
data=""
exp=exp/math
src=""
device=cpu
seed=0
FLEXI=${FLEXISPEECH:-flexispeech}
conf=recipes/math/conf
runs_static="static_r4 static_r8"
runs_flexi="flexi_threshold flexi_learned"
runs_ablation="inconsistent"
base_tokens=64  # the base model answers in sentences (math: with its working)
tokens=8            # the adapters are trained to answer briefly
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --import) src=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$size" in
  tiny) n=(--n-train 48 --n-validation 6 --n-test 30); steps=${steps:-16} ;;  # CPU smoke size
  small) n=(--n-train 400 --n-validation 50 --n-test 120) ;;
  default) n=(--n-train 5000 --n-validation 250 --n-test 500) ;;
  *) echo "run.sh: --size must be tiny, small or default" >&2; exit 2 ;;
esac
data=${data:-data/math-$size}
overrides=(data.corpus="$data" seed="$seed")
[ -n "$steps" ] && overrides+=(train.max_steps="$steps")

step() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
log() { echo "== stage $1: $2"; }

train_run() {  # train one run unless it already finished; --resume continues a killed one
  local name=$1
  if [ -f "$exp/$name/train_summary.json" ]; then echo "$name: already trained"; return; fi
  $FLEXI train --config "$conf/$name.yaml" output_dir="$exp/$name" "${overrides[@]}" --resume
}

if step 0; then
  if [ -n "$src" ]; then
    log 0 "import $src -> $data"
    $FLEXI prepare gsm8k --src "$src" --out "$data"
  else
    log 0 "math questions ($size) -> $data"
    $FLEXI prepare math --out "$data" "${n[@]}" --seed "$seed"
  fi
fi

if step 1; then
  log 1 "signals, prompt perplexity and base-model answers"
  $FLEXI signals "$data" --model smollm2-135m-instruct --splits train,test --batch-size 8 \
    --max-new-tokens "$base_tokens" --device "$device"
fi

if step 2; then
  log 2 "base model on the test split"
  [ -f "$exp/base/eval_test/results.json" ] || $FLEXI eval --data "$data" --model smollm2-135m-instruct \
    --name base --out "$exp/base/eval_test" --batch-size 8 --max-new-tokens "$base_tokens" --device "$device"
fi

if step 3; then log 3 "static LoRA"; for r in $runs_static; do train_run "$r"; done; fi
if step 4; then log 4 "Flexi-LoRA"; for r in $runs_flexi; do train_run "$r"; done; fi
if step 5; then log 5 "ablation"; for r in $runs_ablation; do train_run "$r"; done; fi

if step 6; then
  log 6 "evaluate adapters"
  for r in $runs_static $runs_flexi $runs_ablation; do
    [ -f "$exp/$r/eval_test/results.json" ] || $FLEXI eval --data "$data" --adapter "$exp/$r/adapter" \
      --split test --batch-size 8 --max-new-tokens "$tokens" --device "$device"
  done
fi

if step 7; then
  log 7 "compare"
  results=("$exp/base/eval_test")
  for r in $runs_static $runs_flexi $runs_ablation; do results+=("$exp/$r/eval_test"); done
  $FLEXI compare "${results[@]}" --out "$exp"
  echo "table: $exp/compare.md; plot: $exp/ranks.png"
fi
