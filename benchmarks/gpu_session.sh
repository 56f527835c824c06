#!/usr/bin/env bash
# One GPU session (the device tool's H100/H200, no network): train a package the study's way
# (CONFIG, default training/configs/default.yaml: the first default's recipe; CONFIG=
# training/configs/across-sources.yaml for the default's now, with --test-data instead of the corpus
# in DATA), check CUDA
# against CPU, benchmark, then evaluate generalisation on held-out sources and train the study's
# members, as time allows; phase 5 checks and benchmarks nvImageCodec GPU decoding, phase 6 measures
# what batching decode calls in one process buys (benchmarks/gpu_decode_batching.py). Inputs travel
# in ignored folders: .device/data (the shared training set and the small DICOMs of the corpus),
# .device/weights (ImageNet EfficientNet-Lite, converted to timm names), .whl (cp312 wheels of what
# the GPU image lacks; for phase 5 also nvidia-nvimgcodec-cu13, nvidia-nvjpeg2k-cu13 and
# nvidia-nvjpeg), SHARED (a folder with data/dicom: the DICOMs phase 5 decodes). The carried
# working tree must stay under 64 MiB: carry only what the phases asked for need. Results land in $OUT.
set -u
export PYTHONUNBUFFERED=1
START=$(date +%s)
BUDGET=${BUDGET:-540}
left() { echo $((START + BUDGET - $(date +%s))); }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/pkg/configs" "$OUT/pkg/models" "$OUT/pkg/stackers" "$OUT/pkg/docs"
LOG="$OUT/session.log"
exec > >(tee -a "$LOG") 2>&1
WHL=${WHL:-.whl}
if [ -d "$WHL" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export BODYPART_LITE_WEIGHTS=$PWD/.device/weights
DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-12}; EPOCHS=${EPOCHS:-30}; XEPOCHS=${XEPOCHS:-15}
# Per-member time budget (minutes) for phases 3 and 4: the best epoch so far is kept when it ends.
MEMBER_MINUTES=${MEMBER_MINUTES:+--max-minutes-per-member $MEMBER_MINUTES}
DATA="--data .device/data/train --data .device/data/dicom"
CONFIG=${CONFIG:-training/configs/default.yaml}; STUDY_CONFIG=${STUDY_CONFIG:-training/configs/study.yaml}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch, timm, monai; print('torch', torch.__version__, 'timm', timm.__version__, 'monai', monai.__version__)" || exit 1

collect() {  # copy what exists so far into $OUT (8 files at most come back)
  if [ -f runs/default/package/configs/metadata.json ]; then
    cp runs/default/package/configs/metadata.json "$OUT/pkg/configs/"
    cp runs/default/package/models/*.pt "$OUT/pkg/models/"
    cp runs/default/package/stackers/*.json "$OUT/pkg/stackers/"
    cp runs/default/package/docs/model_card.md "$OUT/pkg/docs/"
  fi
  tar czf "$OUT/reports.tar.gz" --exclude='*.pt' --exclude='package' runs bench*.json cuda_check.json gpu_batching.json pytest*.log 2>/dev/null || true
}

PHASES=${PHASES:-1234}
MODELS=${MODELS:-runs/default/package}
if [[ $PHASES == *1* ]]; then
echo "== phase 1: default package ($(left) s left)"
timeout $(( $(left) - 30 )) python3 -m training --config "$CONFIG" $DATA -o runs/default \
  --device "$DEVICE" --workers "$WORKERS" --epochs "$EPOCHS"
collect
fi
if [[ $PHASES == *2* ]] && [ -f "$MODELS/configs/metadata.json" ]; then
  echo "== phase 2: CUDA vs CPU, benchmark ($(left) s left)"
  [ "$DEVICE" = cuda ] && timeout 90 python3 benchmarks/cuda_check.py --models "$MODELS" --corpus .device/data/dicom --out cuda_check.json
  timeout 150 python3 benchmarks/run.py --models "$MODELS" --corpus .device/data/dicom --device "$DEVICE" \
    --repeat "${REPEAT:-60}" --workers 16 --study-members --no-dicom-outputs --out bench_gpu.json
  collect
fi
if [[ $PHASES == *3* ]] && [ "$(left)" -gt 150 ]; then
  echo "== phase 3: held-out sources ($(left) s left)"
  timeout $(( $(left) - 20 )) python3 -m training --config "$CONFIG" $DATA -o runs/holdout \
    --device "$DEVICE" --workers "$WORKERS" --epochs "$XEPOCHS" $MEMBER_MINUTES \
    --holdout-source s-mostafa-a/covid-chestxray-dataset --holdout-source icgncl/Dissima --holdout-source dlab-berkeley/R-Deep-Learning
  collect
fi
if [[ $PHASES == *4* ]] && [ "$(left)" -gt 150 ]; then
  echo "== phase 4: the study's members from scratch ($(left) s left)"
  timeout $(( $(left) - 15 )) python3 -m training --config "$STUDY_CONFIG" $DATA -o runs/study \
    --device "$DEVICE" --workers "$WORKERS" --epochs "$XEPOCHS" $MEMBER_MINUTES
  collect
fi
if [[ $PHASES == *5* ]]; then
  echo "== phase 5: nvImageCodec GPU decoding: equality with the CPU decoders, then benchmark with and without ($(left) s left)"
  python3 -c "from nvidia import nvimgcodec; print('nvImageCodec', nvimgcodec.__version__)"
  BODYPART_SHARED=${SHARED:-.device/shared} timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu_decoding.py \
    -k "matches_the_cpu or one_shrink" 2>&1 | tee pytest_gpu_decoding.log
  for mode in on off; do
    [ $mode = on ] && limit=$(( $(left) * 3 / 5 )) || limit=$(( $(left) - 10 ))
    timeout $limit python3 benchmarks/run.py --models app/models/default --corpus "${SHARED:-.device/shared}/data/dicom" \
      --device "$DEVICE" --repeat "${REPEAT:-40}" --workers 16 --sizes 224 --no-dicom-outputs --gpu-decode $mode --out bench_gpu_decode_$mode.json
  done
  collect
fi
if [[ $PHASES == *6* ]]; then
  echo "== phase 6: nvImageCodec decode calls batched in one process ($(left) s left)"
  timeout $(( $(left) - 10 )) python3 benchmarks/gpu_decode_batching.py --corpus "${SHARED:-.device/shared}/data/dicom" \
    --copies "${COPIES:-20}" --out gpu_batching.json
  collect
fi
echo "== done ($(left) s left)"
collect
