#!/usr/bin/env bash
# The benchmarks of one device session, in parts that each fit one 10-minute call of the device
# tool; every step has a time limit of its own, so that a slow or failing step leaves the others
# their time, and every script keeps its rows as it goes (what ran before a limit comes back).
#   bash benchmarks/on_device.sh decode|train|evoformer|models|mixed|one   (results and a log under $OUT)
set -u
part=${1:?decode, train, evoformer, models, mixed or one}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
step() {  # step SECONDS COMMAND...: run it, its output in the part's log, Dynamo's error dumps left out
    local limit=$1; shift
    echo "=== $(date +%T) $* (limit ${limit}s)" | tee -a "$out/log-$part.txt"
    timeout -k 10 "$limit" "$@" 2>&1 | grep -v '^[EW][0-9]\{4\} ' | tee -a "$out/log-$part.txt"
    echo "=== $(date +%T) exit ${PIPESTATUS[0]}" | tee -a "$out/log-$part.txt"
}
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv | tee -a "$out/log-$part.txt"
case $part in
decode)  # issue 20, then the decode parts of issue 19
  step 60 python3 benchmarks/check_parametric_kernels.py
  step 200 python3 benchmarks/decode_chunks.py --shapes 8x32x32768x128g4,8x32x32768x128 --chunks 512,2048,0 \
    --out "$out/decode_chunks.json"
  step 200 python3 benchmarks/decode_variants.py --shape 8x32x32768x128 --out "$out/decode_variants.json"
  step 200 python3 benchmarks/bench_attention.py --variants decode,decode4 \
    --shapes 8x32x32768x128g4,8x32x32768x128,1x32x131072x128g4,64x32x2048x128g4 \
    --impls flashlight,flashlight-nosplit,eager,torch.compile,flex,sdpa --tag decode --out "$out"
  step 100 python3 benchmarks/dynamic_sizes.py --variants "" --decode-lengths 2048,8192,32768 \
    --decode-steps 512 --out "$out/dynamic_decode.json"
  ;;
train)  # issue 18, then issue 21's programs beyond attention (forward)
  step 300 python3 benchmarks/training_step.py --shapes 4x16x4096x64 \
    --variants vanilla,causal,sliding_window,document,alibi,softcap,prefix_lm --out "$out/training_d64.json"
  step 130 python3 benchmarks/training_step.py --shapes 4x16x4096x128 --variants vanilla,causal \
    --out "$out/training_d128.json"
  step 140 python3 benchmarks/beyond_attention.py --out "$out/beyond.json"
  ;;
evoformer)  # issue 18's Evoformer step at its own shape (run 22: not done inside 150 s)
  step 500 python3 benchmarks/training_step.py --shapes 32x4x256x64 --variants evoformer \
    --impls flashlight-own,FlexAttention --out "$out/training_evoformer.json"
  ;;
models)  # issue 21's whole models, the backward beyond attention, issue 19's lengths
  step 400 python3 benchmarks/bench_models.py --models llama --out "$out/models.json"  # run 22: over 180 s
  step 100 python3 benchmarks/beyond_attention.py --backward --out "$out/beyond_backward.json"
  step 150 python3 benchmarks/dynamic_sizes.py --decode-lengths "" --decode-steps 0 --out "$out/dynamic.json"
  ;;
one)  # a session with time for one call: the unmeasured work of issues 20, 18 and 21, in that order
  step 45 python3 benchmarks/check_parametric_kernels.py
  step 130 python3 benchmarks/decode_variants.py --shape 8x32x32768x128 --out "$out/decode_variants.json"
  step 130 python3 benchmarks/bench_attention.py --variants decode --shapes 8x32x32768x128g4,8x32x32768x128 \
    --impls flashlight,flashlight-nosplit,eager,flex,sdpa --tag decode --out "$out"
  step 100 python3 benchmarks/training_step.py --shapes 4x16x4096x64 --variants vanilla,causal \
    --impls flashlight,flashlight-own,FlexAttention,"SDPA flash","SDPA cuDNN" --out "$out/training_d64.json"
  step 120 python3 benchmarks/beyond_attention.py --programs rmsnorm,softmax,cross_entropy,linear_cross_entropy,swiglu \
    --impls eager,inductor,flashlight,flashlight-own --out "$out/beyond.json"
  ;;
mixed)  # one call for issues 18 and 21 when the session has time for two calls only
  step 220 python3 benchmarks/training_step.py --shapes 4x16x4096x64 --variants vanilla,causal,document,softcap \
    --out "$out/training_d64.json"
  step 150 python3 benchmarks/beyond_attention.py --out "$out/beyond.json"
  step 180 python3 benchmarks/bench_models.py --models llama --impls eager,inductor,flashlight,flashlight-own \
    --out "$out/models.json"
  ;;
*) echo "unknown part $part"; exit 2 ;;
esac
