#!/usr/bin/env bash
# Stages 1-7 shared by the speech recipes (synthetic, librispeech, commonvoice): signals,
# base evaluation, static LoRA, Flexi-LoRA, the ablation, evaluation, comparison.
# A recipe's run.sh builds or imports its corpus (stage 0) and then calls this script:
#
#   recipes/speech_stages.sh --conf DIR --data DIR --exp DIR [--stage N] [--stop-stage N]
#       [--profile cpu|gpu] [--model SOURCE] [--family whisper|wav2vec2] [--steps N] [--seed N]
#       [--real DIR] [--seeds 0,1,2] [--decisive "static_r16 flexi_benefit_nscale"]
#       [--runs "static_r16 flexi_nested ..."] [--device cuda|cpu] [--jobs N]
#       [--gated "static_r16 flexi_benefit"] [--fixed-ranks "2 4"] [--strengths "0.5"] [--consensus "2 4 8 16"]
#       [--joint "0"] [--joint-weight W]
#       [--real-examples N|all] [--real-30s]
#
# --runs trains and evaluates only these runs, in this order (default: the profile's list);
# --device overrides the profile's device (gpu: cuda, cpu: cpu), e.g. to rehearse the gpu
# profile on a CPU with --size tiny --steps 2. --jobs N trains and evaluates up to N runs at
# once (stages 3-6, each run's output in EXP/<run>/stages.log; default 1, the gpu profile 2):
# a small model's training step is bound by the host, so one GPU has room for several runs;
# their loaders share the cores. With N > 1, stages 1-2 also run beside the runs, whose
# training starts at once where it reads no signal (static and benefit runs; see below).
# GPU memory bounds N: Whisper tiny.en runs held about
# 34 GiB each while decoding at batch 512 on an H200, so 4 ran out of its 140 GiB and 3 fit;
# with N over 3 the gpu profile decodes at batch 256 (N up to 6) or 128.
# --gated names runs that are also evaluated behind a novelty gate (`flexispeech gate`:
# rank 0 for inputs whose pooled base-encoder embedding lies outside the training split's,
# at the validation split's 0.99 quantile), as the run <name>_gated (and <name>_seedN_gated);
# default: none on the cpu profile; on the gpu one static_r16 and the benefit and nested runs.
# --fixed-ranks "R ..." also evaluates every Flexi run (and its seed repetitions) with every
# utterance at rank R, as the run <name>_r<R>: a nested adapter served at one low rank,
# next to the static runs in stage 7; default: none on the cpu profile, 2 on the gpu one.
# --strengths "S ..." also evaluates every static and Flexi run (and its seed repetitions)
# at strength S (`flexispeech scale`: every rank's scale times S, part of the way back to
# the base model), served by its own router, as <name>_s<S>; default: none.
# --real-examples N|all: how many real recordings (--real) each model is scored on, a seeded
# sample (default: 40 on the cpu profile, all on the gpu one).
# --real-30s also scores each adapter on the real recordings at the full 30-s window on the
# cpu profile (the gpu profile always does; the base model is scored at both on either). Off
# by default on the cpu profile: every 30-s decoding costs about 0.8 s of 2 cores, 7 min for
# all 559 recordings. Where the base model hallucinates at the adapters' 10-s window (real
# speech: 86.9 % WER at 10 s, 6.3 % at 30 s), only the 30-s scores compare an adapter with it.
# --consensus "R ..." also evaluates every Flexi run (behind its gate when --gated names it)
# with the consensus of those ranks (`eval --consensus-ranks`: each utterance the router
# sends to an adapter rank decoded at every one of them, the transcript closest to the
# others kept; one decoding per rank), as <name>_consensus; default: none.
# --joint "R ..." also evaluates every static and Flexi run (behind its gate when --gated
# names it) with the joint pick of its routed rank and those ranks (`eval --joint-ranks`:
# each transcript scored at every one of them, the likeliest together kept; "0": the routed
# rank and the base model), as <name>_joint; a static run's is a baseline in stage 7;
# default: none. --joint-weight W weighs the base model's (rank 0's) vote by W
# (`eval --joint-base-weight`; default 1, equal votes): choose it on validation data.
#
# The gpu profile is the full study: 30-s windows, adapters in encoder and decoder, bf16,
# on-the-fly augmentation, early stopping on the validation split, and the extra runs (static
# at the Flexi mean rank, nested training, the embedding router, routing by benefit
# calibrated on the validation split, the augmentation ablation); the --decisive runs are
# repeated for every seed of --seeds.
# Stage 1 caches the signals routers read; the training split's model signals (a decoding
# pass) only when a run reads them (the routed Flexi runs and the gated runs; static and
# benefit runs train on its audio signals alone).
# Every model (base and each adapter) is evaluated on the whole test split at the window
# its adapter was trained with (eval_test) and, when that is shorter, at the full 30 s
# (eval_test_30s); with --real DIR also on that corpus's test split (eval_real, eval_real_30s:
# real human speech, its signals computed while decoding when not cached). Stage 7 prints the runs side
# by side and paired, utterance by utterance, against the base and each static run.
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
real=""
FLEXI=${FLEXISPEECH:-flexispeech}
runs_static="static_r8 static_r16"
runs_flexi="flexi_threshold flexi_learned"
runs_extra=""  # Flexi runs of the profile that run only when --runs names them
runs_static_extra=""  # and static runs
runs_ablation="inconsistent"
seeds=""
decisive="static_r16 flexi_benefit_nscale"
runs=""
device=""
jobs=""
gated=""
gated_given=0
fixed_ranks=""
fixed_given=0
strengths=""
consensus=""
joint=""
joint_weight=""
real_examples=""
real_30s=0

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
    --real) real=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --decisive) decisive=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --gated) gated=$2; gated_given=1; shift 2 ;;
    --fixed-ranks) fixed_ranks=$2; fixed_given=1; shift 2 ;;
    --strengths) strengths=$2; shift 2 ;;
    --consensus) consensus=$2; shift 2 ;;
    --joint) joint=$2; shift 2 ;;
    --joint-weight) joint_weight=$2; shift 2 ;;
    --real-examples) real_examples=$2; shift 2 ;;
    --real-30s) real_30s=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "speech_stages.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$conf" ] || [ -z "$data" ] || [ -z "$exp" ]; then
  echo "speech_stages.sh: --conf, --data and --exp are required" >&2; exit 2
fi

signal_splits=train,test
dev_args=()
aug_overrides=()
calib_args=()
real_args=()
case "$profile" in
  # CPU: 10-s encoder window, encoder frozen and cached, adapters on the decoder.
  # Real speech: a seeded sample of 40 recordings (the whole split on a GPU), the adapters at
  # their own window only (the base at both): on 2 cores every 30-s decoding of the sample
  # costs about 40 s, and the demo has 20 minutes.
  cpu) audio_ctx=500; overrides=(); real_args=(--max-examples 40); fallback_args=(); gate_args=()
       # runs only when --runs names it: static r16 with the distillation term towards the
       # base model (train.keep_base; static_r16_keep3 at weight 3, static_r16_keepbc only on
       # the tokens the base model gets right), e.g.
       # --runs "static_r16 static_r16_keep" --real-examples all --real-30s
       runs_static_extra="static_r16_keep static_r16_keep3 static_r16_keepbc" ;;
  # GPU: the full 30-s window, adapters on encoder and decoder, bf16, DataLoader workers,
  # on-the-fly augmentation (off in the *_noaug ablation). Up to 1,500 steps (at 500 every
  # run's validation loss was still falling). Every 100 steps 1,024 validation rows are
  # scored (loss overall and per rank, and WER: decoded at batch 128); the adapter of the
  # best validation WER is kept and a run stops after 3 validations without improvement,
  # but not before step 650 (about one epoch of the 20,720 training rows). Why WER and not
  # the loss: static r16's validation loss improved from step 200 to 600 while its test
  # WER rose from 22.6 to 24.2 % (insertions 3,141 -> 5,255) and its real-speech WER from
  # 12.1 to 19.5 % (RESULTS.md, fifth lease); why the floor: with 256 rows and none, static
  # r16 stopped at step 400 keeping step 200 (fourth lease). The validation WER is scored
  # with the loop fallback that the evaluation uses (fallback_rank 0, see fallback_args).
  gpu) audio_ctx=1500; overrides=(model.audio_ctx=null model.cache_encoder_layers=0 data.max_duration=null
                                  train.mixed_precision=bf16 train.batch_size=32 train.num_workers=8
                                  train.max_steps=1500 train.warmup_steps=50 train.lr=1.0e-3
                                  train.log_every=25 train.save_every=250 train.eval_every=100
                                  train.eval_examples=1024 eval.batch_size=128
                                  "train.early_stopping={patience: 3, min_steps: 650, metric: wer, fallback_rank: 0}")
       aug_overrides=(augment.spec_augment=true augment.noise_prob=0.5 augment.speed_prob=0.3
                      augment.reverb_prob=0.2)
       signal_splits=train,validation,test  # validation rows are routed too
       dev_args=(--device cuda --batch-size 512)  # decoding is per-step overhead: wide batches amortise it
       # The whole validation split (2,800 rows) decoded at each of the 5 ranks (48 s for 1,000
       # on an H200): the router's 5-fold cross-validated errors beat the best single rank on
       # 1,000 (3,168 against 3,484 word errors), so more rows to fit it on are worth the time.
       # Its mean rank at most 7.5, under the study's bound of half static r16's (8) with a
       # margin for the test split's mix (it served 7.97 there)
       calib_args=(--target-mean-rank 7.5 --fallback-rank 0)  # ranks scored as eval serves them (below)
       # Every adapter's evaluation decodes a looping hypothesis (gzip compression ratio over
       # 2.4, openai-whisper's test) again at rank 0, the base model, which a static adapter
       # has too, and keeps the one that loops less; results.json also scores the run without
       # it (overall_without_fallback). Why: 12-17 loops in 4,480 test utterances cost static
       # r16 0.7-1.3 points, and on the validation split 6-14 loops in 2,800 cost every Flexi
       # rank 1-2.6 points, more than the gaps between ranks, seeds and methods (RESULTS.md,
       # seventh lease; recipes/synthetic/fallback_offline.py).
       fallback_args=(--fallback-rank 0)
       # The gated runs also serve rank 0 where the base model is surer of its transcript
       # (decoder entropy) than on the surest 10 % of the validation split: real recordings
       # the base model transcribes well are such inputs, and every adapter made them worse
       # (RESULTS.md, seventh lease, "the base model's confidence").
       gate_args=(--confident-share 0.1)
       # Each Flexi run is also served at rank 2 alone: on real speech the harm of the
       # eighth lease's Flexi adapter grew with the rank (rank 2 9.3 %, 4 10.4 %, 8 13.1 %,
       # 16 15.1 %, base 6.3 %) while on validation ranks 2-16 were within 2 points
       # (RESULTS.md, eighth and seventh leases). ~90 s of decoding per run.
       [ "$fixed_given" = 1 ] || fixed_ranks="2"
       runs_static="static_r16 static_r6 static_r8"
       # flexi_benefit_nscale, routing by benefit with one scale for every rank, is the best
       # Flexi run measured (RESULTS.md, fourth lease); it is the Flexi half of the decisive pair
       runs_flexi="flexi_benefit_nscale flexi_threshold flexi_learned flexi_embedding flexi_nested"
       # runs only when --runs names them: flexi_benefit (the standard scale alpha/r) and
       # flexi_benefit_full measured worse (RESULTS.md); the telephone-line pair (30 % of
       # training utterances through an 8 kHz G.711 line) won on the test split and did not
       # help real speech (twelfth lease); the decoder-only pair static_r16_dec /
       # flexi_benefit_nscale_dec kept half the synthetic gain and still hurt real speech
       # (fifteenth lease); not yet trained: flexi_benefit_nscale_enc (encoder only). Run a
       # pair for its seeds as, e.g., --decisive "static_r16_dec flexi_benefit_nscale_dec".
       # The keep-base pairs (a distillation term towards the base model's predictions,
       # train.keep_base): at weight 3 on every token (static_r16_keep3 /
       # flexi_benefit_nscale_keep3) it lost most of the gain on synthetic speech (fourteenth
       # lease); at weight 1 on the tokens the base model gets right (static_r16_keepbc /
       # flexi_benefit_nscale_keepbc) it kept the gain, not real speech at the base's level,
       # and the Flexi run lost to static r16 (sixteenth lease); not yet trained on a GPU:
       # weight 1 on every token (static_r16_keep / flexi_benefit_nscale_keep).
       runs_extra="flexi_benefit flexi_benefit_full flexi_benefit_nscale_dec flexi_benefit_nscale_enc flexi_benefit_nscale_tel flexi_benefit_nscale_keep flexi_benefit_nscale_keep3 flexi_benefit_nscale_keepbc"
       runs_static_extra="static_r16_tel static_r16_dec static_r16_keep static_r16_keep3 static_r16_keepbc"
       runs_ablation="inconsistent flexi_nested_noaug"
       jobs=${jobs:-2}
       [ "$gated_given" = 1 ] || gated="static_r16 flexi_benefit_nscale flexi_benefit flexi_benefit_full flexi_benefit_nscale_dec flexi_benefit_nscale_enc flexi_nested static_r16_tel flexi_benefit_nscale_tel static_r16_dec static_r16_keep flexi_benefit_nscale_keep static_r16_keep3 flexi_benefit_nscale_keep3 static_r16_keepbc flexi_benefit_nscale_keepbc" ;;
  *) echo "speech_stages.sh: --profile must be cpu or gpu" >&2; exit 2 ;;
esac
jobs=${jobs:-1}
case "$real_examples" in
  '') ;;
  all) real_args=() ;;
  *[!0-9]*|0) echo "speech_stages.sh: --real-examples must be a positive number or all, got '$real_examples'" >&2; exit 2 ;;
  *) real_args=(--max-examples "$real_examples") ;;
esac
for r in $fixed_ranks; do
  case "$r" in ''|*[!0-9]*|0) echo "speech_stages.sh: --fixed-ranks must be ranks > 0, got '$fixed_ranks'" >&2; exit 2 ;; esac
done
for v in $strengths; do
  case "$v" in ''|*[!0-9.]*|.|*.*.*) v=0 ;; esac
  if ! awk -v v="$v" 'BEGIN { exit !(v > 0) }'; then
    echo "speech_stages.sh: --strengths must be numbers > 0, got '$strengths'" >&2; exit 2
  fi
done
for r in $consensus; do
  case "$r" in ''|*[!0-9]*) echo "speech_stages.sh: --consensus must be ranks >= 0, got '$consensus'" >&2; exit 2 ;; esac
done
if [ -n "$consensus" ] && [ "$(echo $consensus | wc -w)" -lt 2 ]; then
  echo "speech_stages.sh: --consensus needs two or more ranks, got '$consensus'" >&2; exit 2
fi
for r in $joint; do
  case "$r" in ''|*[!0-9]*) echo "speech_stages.sh: --joint must be ranks >= 0, got '$joint'" >&2; exit 2 ;; esac
done
joint_args=()
if [ -n "$joint_weight" ]; then
  [ -n "$joint" ] || { echo "speech_stages.sh: --joint-weight needs --joint" >&2; exit 2; }
  case "$joint_weight" in *[!0-9.]*|.|*.*.*) echo "speech_stages.sh: --joint-weight must be a number >= 0, got '$joint_weight'" >&2; exit 2 ;; esac
  joint_args=(--joint-base-weight "$joint_weight")
fi
case "$jobs" in ''|*[!0-9]*|0) echo "speech_stages.sh: --jobs must be a positive integer, got '$jobs'" >&2; exit 2 ;; esac
if [ "$profile" = gpu ] && [ "$device" != cpu ] && [ "$jobs" -gt 1 ]; then
  # Runs side by side share the host: each run's loaders (training and decoding) get their
  # share of the cores, 2 to 8. Three runs at 8 workers each, every decoding worker holding
  # batches of 512 clips ahead, ran out of host memory in the study.
  share=$(( ($(nproc) - 1) / jobs )); [ "$share" -lt 2 ] && share=2; [ "$share" -gt 8 ] && share=8
  overrides+=(train.num_workers="$share"); dev_args+=(--workers "$share")
  # And the GPU's memory: a tiny.en run held about 34 GiB while decoding at batch 512, so
  # up to 3 runs side by side decode at 512, up to 6 at 256, more at 128 (the later
  # --batch-size wins). With three runs nvidia-smi already read 100 % utilisation, so more
  # runs at once make none faster; they can fill the gaps between the others' phases.
  # A larger model holds more: Whisper base took 2.1x tiny.en's memory decoding 64 clips at
  # 30 s on a CPU (2.02 against 0.96 GB), so two base runs at 512 would need about the
  # H200's whole 140 GiB; larger models decode at half the batch for the same job counts.
  if [ "$model" = whisper-tiny.en ]; then
    if [ "$jobs" -gt 3 ]; then dev_args+=(--batch-size "$([ "$jobs" -le 6 ] && echo 256 || echo 128)"); fi
  else
    dev_args+=(--batch-size "$([ "$jobs" -le 3 ] && echo 256 || echo 128)")
  fi
fi
# The decisive pair again for every other seed of --seeds: runs <name>_seed<N>.
for s in ${seeds//,/ }; do
  [ "$s" = "$seed" ] && continue
  for r in $decisive; do runs_ablation+=" ${r}_seed$s"; done
done
overrides+=(data.corpus="$data" seed="$seed" model.source="$model" model.family="$family")
if [ "$family" != whisper ]; then  # the encoder window and cache are Whisper's
  overrides+=(model.audio_ctx=null model.cache_encoder_layers=0 adapter.target_modules=null)
fi
[ -n "$steps" ] && overrides+=(train.max_steps="$steps")
ctx_args=(--audio-ctx "$audio_ctx")
[ "$family" = whisper ] || ctx_args=()
profile_flexi="$runs_flexi $runs_extra"  # before --runs narrows the lists: is_flexi reads it
profile_static="$runs_static $runs_static_extra"
all_runs="$runs_static $runs_flexi $runs_ablation"
if [ -n "$runs" ]; then  # the runs asked for, in their order, each in the stage of its kind
  for r in $runs; do
    case " $all_runs $runs_extra $runs_static_extra " in *" $r "*) ;; *) echo "speech_stages.sh: --runs: unknown run $r (this profile has: $all_runs $runs_extra $runs_static_extra)" >&2; exit 2 ;; esac
  done
  pick() { local out="" r; for r in $runs; do case " $1 " in *" $r "*) out+=" $r" ;; esac; done; echo "$out"; }
  runs_static=$(pick "$runs_static $runs_static_extra"); runs_flexi=$(pick "$runs_flexi $runs_extra"); runs_ablation=$(pick "$runs_ablation")
  all_runs=$runs
fi
if [ -n "$device" ]; then
  dev_args=(--device "$device" "${dev_args[@]:2}")
  [ "$device" = cpu ] && [ "$profile" = gpu ] && overrides+=("train.mixed_precision='no'")  # quoted: YAML reads a bare no as false
fi

base_run() {  # base_run RUN: the run RUN repeats with another seed (RUN itself if none)
  if [[ $1 =~ ^(.+)_seed[0-9]+$ ]]; then echo "${BASH_REMATCH[1]}"; else echo "$1"; fi
}
is_gated() {  # is_gated RUN: RUN (or the run it repeats with another seed) is in --gated
  case " $gated " in *" $(base_run "$1") "*) return 0 ;; esac
  return 1
}
gated_runs() {  # the runs of this invocation that are also evaluated behind the gate
  local r out=""
  for r in $all_runs; do if is_gated "$r"; then out+=" $r"; fi; done
  echo "$out"
}
step() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
log() { echo "== stage $1: $2 (at ${SECONDS} s)"; }

train_run() {  # train one run unless it already finished; --resume continues a killed one
  local name=$1 config=$1 extra=()
  if [[ $name =~ ^(.+)_seed([0-9]+)$ ]]; then  # a seed repetition of a run: its config, another seed
    config=${BASH_REMATCH[1]}; extra=(seed="${BASH_REMATCH[2]}" name="$name")
  fi
  [[ $name == *_noaug* ]] || extra+=("${aug_overrides[@]}")
  if [ -f "$exp/$name/train_summary.json" ]; then
    echo "$name: already trained"
  else
    if trains_on_signals "$name"; then await_signals; fi
    $FLEXI train --config "$conf/$config.yaml" output_dir="$exp/$name" "${overrides[@]}" "${extra[@]}" --resume
  fi
  # a run killed between its training and its calibration is calibrated on the next invocation
  if [[ $config == flexi_benefit* ]] && [ ! -f "$exp/$name/calibrate_validation/summary.json" ]; then
    await_signals  # the validation split's model signals and base WER
    # Routing by benefit: fit the router on the validation split (replaces the adapter's router).
    $FLEXI calibrate "$exp/$name/adapter" --data "$data" --split validation "${dev_args[@]}" "${calib_args[@]}"
  fi
}

train_signals_needed() {  # does a run of this invocation read the training split's model signals?
  # Static runs and the benefit runs train without a router that reads signals (fixed or
  # random ranks; the benefit router is fit on the validation split); every other Flexi run
  # routes its training rows on the decoder-confidence proxy (and the embedding router on
  # the embedding). The novelty gate reads only the training split's embedding.
  local r
  for r in $all_runs; do
    if trains_on_signals "$r"; then return 0; fi
  done
  return 1
}

trains_on_signals() {  # trains_on_signals RUN: does RUN's training read stage 1's columns?
  case $(base_run "$1") in static_*|flexi_benefit*) return 1 ;; esac
  return 0
}

stage_signals() {  # stage 1
  log 1 "signals and base-model decoding"
  # The training split's model signals (decoding 20,720 utterances on the gpu profile, three
  # quarters of the corpus) only when a run reads them; its audio signals (duration, SNR,
  # speech activity: no model) always, since every training batch is routed on them. When
  # only the novelty gate needs it, the training split gets the embedding alone: an encoder
  # pass, no decoding (a lease measured 268 s for the decoding pass that made it).
  if ! train_signals_needed; then
    $FLEXI signals "$data" --splits train
    if [ -n "$(gated_runs)" ]; then
      $FLEXI signals "$data" --model "$model" --audio-ctx "$audio_ctx" --splits train --embedding-only "${dev_args[@]}"
    fi
    signal_splits=${signal_splits/train,/}
  fi
  # The decoder-confidence proxy comes from Whisper tiny.en whatever model is adapted; the
  # embedding (the embedding router, the novelty gate) from the adapted model's own base
  # encoder: in the same pass when that is tiny.en too.
  emb=()
  if [[ " $all_runs " == *" flexi_embedding"* ]] || [ -n "$(gated_runs)" ]; then emb=(--embedding); fi
  same=(); [ "$model" = whisper-tiny.en ] && same=("${emb[@]}")
  $FLEXI signals "$data" --model whisper-tiny.en --audio-ctx "$audio_ctx" --splits "$signal_splits" "${same[@]}" "${dev_args[@]}"
  if [ ${#emb[@]} -gt 0 ] && [ ${#same[@]} -eq 0 ]; then
    $FLEXI signals "$data" --model "$model" --audio-ctx "$audio_ctx" --splits "$signal_splits" --embedding "${dev_args[@]}"
  fi
  # The real recordings (--real) have no cached signals, so `eval` computes what a router
  # or confidence gate reads from the adapted model's own base (adapter off): the same as
  # tiny.en's only when that model is tiny.en. For another model (whisper-base: entropy 1.87
  # against tiny.en's 0.87 on one recording) the routers and gates, fit on tiny.en's proxy,
  # would read another model's; so tiny.en's proxy is cached on the real recordings too.
  if [ -n "$real" ] && [ "$model" != whisper-tiny.en ]; then
    $FLEXI signals "$real" --model whisper-tiny.en --audio-ctx "$audio_ctx" --splits test "${dev_args[@]}"
  fi
}

evaluate() {  # evaluate DIR_NAME ARGS...: one eval unless its results exist for these ARGS
  local out=$1; shift
  # ARGS (what is scored and how; not the device, batch or workers) are kept beside the
  # results: a re-run with other ARGS (another --real-examples, window, fallback, joint
  # weight) evaluates again (eval replaces the results only once it has new ones) instead
  # of pairing old results with new ones in stage 7. Results from before this record are
  # kept as they are.
  local args="$*" recorded
  if [ -f "$out/results.json" ]; then
    [ -f "$out/eval_args.txt" ] || return 0
    recorded=$(cat "$out/eval_args.txt")
    [ "$recorded" != "$args" ] || return 0
    echo "$out: evaluated with other arguments ($recorded); evaluating again"
  fi
  $FLEXI eval "$@" --out "$out" "${dev_args[@]}"
  printf '%s\n' "$args" > "$out/eval_args.txt"
}

stage_base() {  # stage 2
  log 2 "base model on the whole test split, at the adapters' window and at 30 s"
  base=(--model "$model" --family "$family" --name base)
  evaluate "$exp/base/eval_test" --data "$data" "${base[@]}" "${ctx_args[@]}"
  if [ "$family" = whisper ] && [ "$audio_ctx" != 1500 ]; then
    evaluate "$exp/base/eval_test_30s" --data "$data" "${base[@]}" --audio-ctx 1500
  fi
  if [ -n "$real" ]; then
    evaluate "$exp/base/eval_real" --data "$real" "${base[@]}" "${ctx_args[@]}" "${real_args[@]}"
    [ "$family" != whisper ] || [ "$audio_ctx" = 1500 ] || \
      evaluate "$exp/base/eval_real_30s" --data "$real" "${base[@]}" --audio-ctx 1500 "${real_args[@]}"
  fi
}

# Stages 1-2 beside the runs (--jobs > 1): a static or benefit run trains on the corpus
# alone (fixed or random ranks; the benefit router is fit after training), so its training
# starts as soon as the corpus exists, and stages 1-2 (signals and the base model's
# decoding: 304 s of a Whisper base lease on an H200, the GPU half idle) run beside it. A
# run waits for stage 1 (`await_signals`) before the first step that reads its columns:
# routed runs before training, every run before calibration, evaluation and the gate.
# Stage 1 swaps columns into the corpus while the runs read it; the corpus' lock
# (flexispeech.data.corpus) keeps a reader from opening it halfway through a swap.
signals_status="$exp/.signals_status"
signals_beside=0
if [ "$jobs" -gt 1 ] && step 1 && { step 3 || step 4 || step 5 || step 6; }; then
  signals_beside=1
fi
await_signals() {  # wait for the stage 1 running beside the runs; fail if it failed
  [ "$signals_beside" = 1 ] || return 0
  [ -f "$signals_status" ] || echo "waiting for stage 1 (signals; its output: the recipe's log) (at ${SECONDS} s)"
  while [ ! -f "$signals_status" ]; do sleep 1; done
  if [ "$(cat "$signals_status")" != 0 ]; then
    echo "stage 1 (signals) failed; this run needs its columns (the recipe's log says why)" >&2
    return 1
  fi
}
if [ "$signals_beside" = 1 ]; then
  mkdir -p "$exp"
  rm -f "$signals_status" "$exp/.base_status"
  (
    set +e
    (set -e; stage_signals); echo $? > "$signals_status"
    if [ "$(cat "$signals_status")" = 0 ] && step 2; then (set -e; stage_base); echo $? > "$exp/.base_status"; fi
  ) &
  signals_pid=$!
else
  if step 1; then stage_signals; fi
  if step 2; then stage_base; fi
fi

eval_run() {  # stage 6 for one run: the test split at its window (and 30 s), real speech
  local r=$1
  local adapter=(--adapter "$exp/$r/adapter" --split test --name "$r" "${fallback_args[@]}")  # the window: the adapter's own
  evaluate "$exp/$r/eval_test" --data "$data" "${adapter[@]}"
  if [ "$family" = whisper ] && [ "$audio_ctx" != 1500 ]; then
    evaluate "$exp/$r/eval_test_30s" --data "$data" "${adapter[@]}" --audio-ctx 1500
  fi
  if [ -n "$real" ]; then
    evaluate "$exp/$r/eval_real" --data "$real" "${adapter[@]}" "${real_args[@]}"
    [ "$family" != whisper ] || [ "$audio_ctx" = 1500 ] || { [ "$profile" = cpu ] && [ "$real_30s" = 0 ]; } || \
      evaluate "$exp/$r/eval_real_30s" --data "$real" "${adapter[@]}" --audio-ctx 1500 "${real_args[@]}"
  fi
}

is_flexi() {  # is_flexi RUN: RUN (or the run it repeats with another seed) is a Flexi run
  case " $profile_flexi " in *" $(base_run "$1") "*) return 0 ;; esac
  return 1
}

fixed_runs() {  # the <run>_r<R> and <run>_s<S> evaluations of this invocation
  local r k out=""
  for r in $all_runs; do
    if is_flexi "$r"; then for k in $fixed_ranks; do out+=" ${r}_r$k"; done; fi
    if is_flexi "$r" || is_static "$r"; then for k in $strengths; do out+=" ${r}_s$k"; done; fi
    if is_flexi "$r" && [ -n "$consensus" ]; then out+=" ${r}_consensus"; fi
    if { is_flexi "$r" || is_static "$r"; } && [ -n "$joint" ]; then out+=" ${r}_joint"; fi
  done
  echo "$out"
}

is_static() {  # is_static RUN: RUN (or the run it repeats with another seed) is a static run
  case " $profile_static " in *" $(base_run "$1") "*) return 0 ;; esac
  return 1
}

eval_strength() {  # stage 6 for a static or Flexi run at each --strengths strength: <run>_s<S>
  local r=$1 k
  is_flexi "$r" || is_static "$r" || return 0
  for k in $strengths; do
    [ -f "$exp/${r}_s$k/adapter/adapter_config.json" ] || \
      $FLEXI scale "$exp/$r/adapter" --strength "$k" --out "$exp/${r}_s$k/adapter"
    eval_variant "${r}_s$k" "$exp/${r}_s$k/adapter"
  done
}

eval_variant() {  # eval_variant NAME ADAPTER_DIR [ARGS...]: test split and real speech as NAME
  local name=$1 dir=$2; shift 2
  local adapter=(--adapter "$dir" --split test --name "$name" "$@" "${fallback_args[@]}")
  evaluate "$exp/$name/eval_test" --data "$data" "${adapter[@]}"
  if [ -n "$real" ]; then evaluate "$exp/$name/eval_real" --data "$real" "${adapter[@]}" "${real_args[@]}"; fi
}

served_adapter() {  # served_adapter RUN: its adapter, behind its gate when --gated names it
  if is_gated "$1"; then echo "$exp/${1}_gated/adapter"; else echo "$exp/$1/adapter"; fi  # the gate keeps its rank-0 rows
}
eval_consensus() {  # stage 6 for a Flexi run served by the consensus of --consensus ranks
  local r=$1
  is_flexi "$r" && [ -n "$consensus" ] || return 0
  eval_variant "${r}_consensus" "$(served_adapter "$r")" --consensus-ranks "$(echo $consensus | tr ' ' ,)"
}
eval_joint() {  # stage 6 for a static or Flexi run served by the joint pick with --joint ranks
  local r=$1
  { is_flexi "$r" || is_static "$r"; } && [ -n "$joint" ] || return 0
  eval_variant "${r}_joint" "$(served_adapter "$r")" --joint-ranks "$(echo $joint | tr ' ' ,)" "${joint_args[@]}"
}
eval_fixed() {  # stage 6 for a Flexi run at each --fixed-ranks rank: <run>_r<R>
  local r=$1 k
  is_flexi "$r" || return 0
  for k in $fixed_ranks; do eval_variant "${r}_r$k" "$exp/$r/adapter" --rank "$k"; done
}

kind_of() {  # the training stage of a run: 3 static, 4 Flexi, 5 ablation
  case " $runs_static " in *" $1 "*) echo 3; return ;; esac
  case " $runs_flexi " in *" $1 "*) echo 4; return ;; esac
  echo 5
}

gate_run() {  # a --gated run's adapter behind the novelty gate (a router change, seconds), evaluated as <run>_gated
  local r=$1
  is_gated "$r" || return 0
  step "$(kind_of "$r")" || step 6 || return 0
  await_signals  # the training split's embedding
  [ -f "$exp/${r}_gated/adapter/router.json" ] || \
    $FLEXI gate "$exp/$r/adapter" --data "$data" --out "$exp/${r}_gated/adapter" "${gate_args[@]}"
  if step 6; then eval_run "${r}_gated"; fi
}

run_one() {  # stages 3-6 of one run; its kind says which training stage it belongs to
  local r=$1
  if step "$(kind_of "$r")"; then train_run "$r"; fi
  if step 6; then await_signals; eval_run "$r"; eval_fixed "$r"; eval_strength "$r"; fi
  gate_run "$r"
  if step 6; then eval_consensus "$r"; eval_joint "$r"; fi  # after the gate: a gated run's are behind it
}

if [ "$jobs" -gt 1 ] && { step 3 || step 4 || step 5 || step 6; }; then
  log "3-6" "train and evaluate $jobs runs at a time (each run's output: $exp/<run>/stages.log)"
  for r in $all_runs; do
    # only runs count towards --jobs, not the stages 1-2 beside them
    while [ "$(jobs -rp | grep -cvx "${signals_pid:-none}")" -ge "$jobs" ]; do wait -n || true; done
    mkdir -p "$exp/$r"
    rm -f "$exp/$r/.stages_status"
    ( set +e; (set -e; run_one "$r"); echo $? > "$exp/$r/.stages_status" ) > "$exp/$r/stages.log" 2>&1 &
    echo "$r: started (at ${SECONDS} s)"
  done
  wait
  failed="" status=0
  if [ "$signals_beside" = 1 ]; then
    if [ "$(cat "$signals_status" 2>/dev/null)" != 0 ]; then
      echo "speech_stages.sh: stage 1 (signals) failed, stage 2 not run (their output: above)" >&2; status=1
    elif step 2 && [ "$(cat "$exp/.base_status" 2>/dev/null)" != 0 ]; then
      echo "speech_stages.sh: stage 2 (the base model) failed (its output: above)" >&2; status=1
    fi
  fi
  for r in $all_runs; do
    if [ "$(cat "$exp/$r/.stages_status" 2>/dev/null)" = 0 ]; then echo "$r: done"; else failed+=" $r"; fi
  done
  if [ -n "$failed" ]; then
    echo "speech_stages.sh: runs that failed:$failed (their output: $exp/<run>/stages.log)" >&2
    status=1
  fi
  [ "$status" = 0 ] || exit 1
else
  if step 3; then log 3 "static LoRA"; for r in $runs_static; do train_run "$r"; done; fi
  if step 4; then log 4 "Flexi-LoRA"; for r in $runs_flexi; do train_run "$r"; done; fi
  if step 5; then log 5 "ablation"; for r in $runs_ablation; do train_run "$r"; done; fi
  if step 6; then
    log 6 "evaluate adapters on the whole test split, at their window and at 30 s"
    for r in $all_runs; do eval_run "$r"; eval_fixed "$r"; eval_strength "$r"; done
  fi
  for r in $all_runs; do gate_run "$r"; done
  if step 6; then for r in $all_runs; do eval_consensus "$r"; eval_joint "$r"; done; fi
fi

if step 7; then
  log 7 "compare: side by side, and paired against the base and each static run (and its gated and scaled copies)"
  results=()
  for r in base $all_runs $(for g in $(gated_runs); do echo "${g}_gated"; done) $(fixed_runs); do
    for e in eval_test eval_test_30s eval_real eval_real_30s; do
      if [ -f "$exp/$r/$e/results.json" ]; then results+=("$exp/$r/$e"); fi
    done
  done
  # every static run is a baseline, and so is each of its variants (behind the gate, at each
  # strength): a Flexi run is then paired with the static run that had the same treatment
  baselines=(--baseline base)
  for r in $all_runs; do
    is_static "$r" || continue
    baselines+=(--baseline "$r")
    if is_gated "$r"; then baselines+=(--baseline "${r}_gated"); fi
    for k in $strengths; do baselines+=(--baseline "${r}_s$k"); done
    if [ -n "$joint" ]; then baselines+=(--baseline "${r}_joint"); fi
  done
  $FLEXI compare "${results[@]}" --out "$exp" "${baselines[@]}"
  echo "tables: $exp/compare.md; plots: $exp/wer_by_snr.png, $exp/ranks.png"
fi
