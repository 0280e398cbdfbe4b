#!/usr/bin/env bash
# Stages 0-7 shared by the text recipes (recipes/math, recipes/qa), which call it as
#   recipes/text_stages.sh TASK [their options]
# Every stage only calls the flexispeech command line; finished outputs are skipped, so a
# re-run continues where it stopped (`train --resume` picks up a killed run).
set -euo pipefail
task=$1
shift

stage=0
stop_stage=7
profile=cpu
size=""
steps=""
data=""
exp=""
src=""
seed=0
FLEXI=${FLEXISPEECH:-flexispeech}
conf=recipes/$task/conf
runs_static="static_r4 static_r8"
runs_flexi="flexi_threshold flexi_learned"
runs_ablation="inconsistent"
signal_splits=train,test
calib_args=()

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --import) src=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Per task: tokens the base model may write (it answers in sentences; math: with its
# working), tokens an adapter may write (math: the worked steps, up to ~180 tokens at 6
# steps; QA: a name or a number), training batch and steps on a CPU (QA prompts are ~500
# tokens), steps on a GPU, and the question counts per size (train validation test).
case "$task" in
  math) base_tokens=160; tokens=192; cpu_batch=8; cpu_steps=28; gpu_steps=500
        declare -A counts=([tiny]="48 6 30" [cpu]="224 30 72" [small]="400 50 120" [gpu]="3000 100 500" [default]="5000 250 500") ;;
  qa) base_tokens=24; tokens=16; cpu_batch=4; cpu_steps=20; gpu_steps=300
      declare -A counts=([tiny]="32 6 18" [cpu]="80 30 48" [small]="400 50 120" [gpu]="3000 100 500" [default]="5000 250 500") ;;
  *) echo "text_stages.sh: unknown task $task (math or qa)" >&2; exit 2 ;;
esac

# Profiles. cpu: two torch threads (measured on 2 cores: training 1.8x and batched
# decoding 2.5x faster than one thread), 32 questions per decoding batch (decoding is
# bound by reading the weights, so a larger batch is nearly free per step).
# gpu: one CUDA device, 128 questions per decoding batch, batch 16, more steps at a lower rate,
# and flexi_benefit_nscale, the best Flexi run measured on speech (routing by benefit, one scale
# for every rank): trained at random ranks with nested training, then calibrated on the
# validation split, whose questions are answered at ranks 0, 2, 4 and 8 (stage 1 caches
# its prompt signals), at a mean rank of at most 4, half of static r8's. Not on the cpu
# profile: its nested training (every row twice per step) and the four decodings of the
# validation split would add well over the few minutes a CPU run can spare.
case "$profile" in
  cpu) device=cpu; decode_batch=32; size=${size:-cpu}
       export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
       overrides=(train.batch_size="$cpu_batch"); default_steps=$cpu_steps ;;
  gpu) device=cuda; decode_batch=128; size=${size:-gpu}
       overrides=(train.batch_size=16 train.lr=1.0e-3 train.warmup_steps=30 train.log_every=20 train.save_every=100)
       default_steps=$gpu_steps
       runs_flexi="$runs_flexi flexi_benefit_nscale"
       signal_splits=train,validation,test
       calib_args=(--target-mean-rank 4) ;;
  *) echo "run.sh: --profile must be cpu or gpu" >&2; exit 2 ;;
esac
[ "$size" = tiny ] && default_steps=16  # smoke size: seconds per run, numbers mean nothing
if [ -z "${counts[$size]:-}" ]; then
  echo "run.sh: --size must be one of: ${!counts[*]}" >&2; exit 2
fi
read -r n_train n_validation n_test <<< "${counts[$size]}"
if [ -n "$src" ] && [[ " $runs_flexi " == *" flexi_benefit_nscale "* ]]; then
  # Imported GSM8K / SQuAD files have no validation split to calibrate the router on.
  echo "note: --import: flexi_benefit_nscale left out (the imported task has no validation split)"
  runs_flexi=${runs_flexi/ flexi_benefit_nscale/}
fi
data=${data:-data/$task-$size}
exp=${exp:-exp/$task-$size}
overrides+=(data.corpus="$data" seed="$seed" train.max_steps="${steps:-$default_steps}")

step() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
log() { echo "== stage $1: $2"; }

train_run() {  # train one run unless it already finished; --resume continues a killed one
  local name=$1
  if [ -f "$exp/$name/train_summary.json" ]; then
    echo "$name: already trained"
  else
    $FLEXI train --config "$conf/$name.yaml" output_dir="$exp/$name" "${overrides[@]}" --resume
  fi
  if [[ $name == flexi_benefit* ]] && [ ! -f "$exp/$name/calibrate_validation/summary.json" ]; then
    # Routing by benefit: fit the router on the validation split (replaces the adapter's
    # router), answering at the cap on new tokens the evaluation uses.
    $FLEXI calibrate "$exp/$name/adapter" --data "$data" --split validation --batch-size "$decode_batch" \
      --max-new-tokens "$tokens" --device "$device" "${calib_args[@]}"
  fi
}

if step 0; then
  if [ -n "$src" ]; then
    log 0 "import $src -> $data"
    case "$task" in math) importer=gsm8k ;; qa) importer=squad ;; esac
    $FLEXI prepare "$importer" --src "$src" --out "$data"
  else
    log 0 "$task questions ($size: $n_train / $n_validation / $n_test) -> $data"
    $FLEXI prepare "$task" --out "$data" --n-train "$n_train" --n-validation "$n_validation" --n-test "$n_test" --seed "$seed"
  fi
fi

if step 1; then
  log 1 "signals ($signal_splits), base-model answers and difficulty labels (train)"
  $FLEXI signals "$data" --model smollm2-135m-instruct --splits "$signal_splits" --label-splits train \
    --batch-size "$decode_batch" --max-new-tokens "$base_tokens" --device "$device"
fi

if step 2; then
  log 2 "base model on the test split"
  [ -f "$exp/base/eval_test/results.json" ] || $FLEXI eval --data "$data" --model smollm2-135m-instruct \
    --name base --out "$exp/base/eval_test" --batch-size "$decode_batch" --max-new-tokens "$base_tokens" --device "$device"
fi

if step 3; then log 3 "static LoRA"; for r in $runs_static; do train_run "$r"; done; fi
if step 4; then log 4 "Flexi-LoRA"; for r in $runs_flexi; do train_run "$r"; done; fi
if step 5; then log 5 "ablation"; for r in $runs_ablation; do train_run "$r"; done; fi

if step 6; then
  log 6 "evaluate adapters"
  for r in $runs_static $runs_flexi $runs_ablation; do
    [ -f "$exp/$r/eval_test/results.json" ] || $FLEXI eval --data "$data" --adapter "$exp/$r/adapter" \
      --split test --batch-size "$decode_batch" --max-new-tokens "$tokens" --device "$device"
  done
fi

if step 7; then
  log 7 "compare"
  results=("$exp/base/eval_test")
  for r in $runs_static $runs_flexi $runs_ablation; do results+=("$exp/$r/eval_test"); done
  $FLEXI compare "${results[@]}" --out "$exp"
  echo "table: $exp/compare.md; plot: $exp/ranks.png"
fi
