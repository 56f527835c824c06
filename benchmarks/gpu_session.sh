#!/usr/bin/env bash
# One GPU session (the device tool's H100/H200, no network): train the default package, check CUDA
# against CPU, benchmark, then evaluate generalisation on held-out sources and train the study's
# members, as time allows. Inputs travel in ignored folders: .device/data (the shared training set
# and the small DICOMs of the corpus), .device/weights (ImageNet EfficientNet-Lite, converted to
# timm names), .whl (cp312 wheels of what the GPU image lacks). Results land in $OUT.
set -u
export PYTHONUNBUFFERED=1
START=$(date +%s)
BUDGET=${BUDGET:-540}
left() { echo $((START + BUDGET - $(date +%s))); }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/pkg/configs" "$OUT/pkg/models" "$OUT/pkg/stackers" "$OUT/pkg/docs"
LOG="$OUT/session.log"
exec > >(tee -a "$LOG") 2>&1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export BODYPART_LITE_WEIGHTS=$PWD/.device/weights
DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-12}; EPOCHS=${EPOCHS:-30}; XEPOCHS=${XEPOCHS:-15}
DATA="--data .device/data/train --data .device/data/dicom"
CONFIG=${CONFIG:-training/configs/default.yaml}; STUDY_CONFIG=${STUDY_CONFIG:-training/configs/study.yaml}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch, timm, monai; print('torch', torch.__version__, 'timm', timm.__version__, 'monai', monai.__version__)"

collect() {  # copy what exists so far into $OUT (8 files at most come back)
  if [ -f runs/default/package/configs/metadata.json ]; then
    cp runs/default/package/configs/metadata.json "$OUT/pkg/configs/"
    cp runs/default/package/models/*.pt "$OUT/pkg/models/"
    cp runs/default/package/stackers/*.json "$OUT/pkg/stackers/"
    cp runs/default/package/docs/model_card.md "$OUT/pkg/docs/"
  fi
  tar czf "$OUT/reports.tar.gz" --exclude='*.pt' --exclude='package' runs bench*.json cuda_check.json 2>/dev/null || true
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
    --device "$DEVICE" --workers "$WORKERS" --epochs "$XEPOCHS" \
    --holdout-source s-mostafa-a/covid-chestxray-dataset --holdout-source icgncl/Dissima --holdout-source dlab-berkeley/R-Deep-Learning
  collect
fi
if [[ $PHASES == *4* ]] && [ "$(left)" -gt 150 ]; then
  echo "== phase 4: the study's members from scratch ($(left) s left)"
  timeout $(( $(left) - 15 )) python3 -m training --config "$STUDY_CONFIG" $DATA -o runs/study \
    --device "$DEVICE" --workers "$WORKERS" --epochs "$XEPOCHS"
  collect
fi
echo "== done ($(left) s left)"
collect
