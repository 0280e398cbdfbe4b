#!/usr/bin/env bash
# Stages 0-7 shared by the text recipes (recipes/math, recipes/qa), which call it as
#   recipes/text_stages.sh TASK [their options]
# Every stage only calls the flexispeech command line; finished outputs are skipped.
set -euo pipefail
task=$1
shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

stage=0
stop_stage=7
size=tiny
steps=""
data=""
exp=exp/$task
src=""
device=cpu
seed=0
FLEXI=${FLEXISPEECH:-flexispeech}
conf=recipes/$task/conf
runs_static="static_r4 static_r8"
runs_flexi="flexi_threshold flexi_learned"
runs_ablation="inconsistent"

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
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$task" in
  # base_tokens: the base model answers in sentences (math: with its working);
  # tokens: the adapters are trained to answer briefly.
  math) importer=gsm8k; base_tokens=64; tokens=8; tiny=(--n-train 48 --n-validation 6 --n-test 30); tiny_steps=16 ;;
  qa) importer=squad; base_tokens=24; tokens=16; tiny=(--n-train 32 --n-validation 6 --n-test 18); tiny_steps=4 ;;  # ~500-token prompts
  *) echo "text_stages.sh: unknown task $task (math or qa)" >&2; exit 2 ;;
esac
case "$size" in
  tiny) n=("${tiny[@]}"); steps=${steps:-$tiny_steps} ;;  # CPU smoke size
  small) n=(--n-train 400 --n-validation 50 --n-test 120) ;;
  default) n=(--n-train 5000 --n-validation 250 --n-test 500) ;;
  *) echo "run.sh: --size must be tiny, small or default" >&2; exit 2 ;;
esac
data=${data:-data/$task-$size}
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
    $FLEXI prepare "$importer" --src "$src" --out "$data"
  else
    log 0 "$task questions ($size) -> $data"
    $FLEXI prepare "$task" --out "$data" "${n[@]}" --seed "$seed"
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
