#!/usr/bin/env bash
# On one CUDA GPU machine, in under 40 minutes: the GPU recipe (experiment=vgg16_bn_scratch) on the labelled images,
# its validation scores with and without TTA and temperature scaling, a tta=5 submission for the test images, then
# the training and prediction throughput benchmarks. Every figure lands in $OUT:
#
#   machine.txt            GPU, driver, torch versions
#   recipe.md              the recipe's command, wall time, the first epochs' validation scores, val accuracy /
#                          log loss (raw, calibrated in-sample and cross-fitted, tta=5)
#   pipeline_throughput.md bench/pipeline_throughput.py (workers vs device pipeline against model-only, 3 sizes)
#   train_throughput.md    bench/train_throughput.py (model-only, catdog pipeline, baseline) per batch size
#   predict_throughput.md  bench/predict_throughput.py (tta 0 and 5, bf16 vs fp32)
#   run/                   the training run folder (checkpoints, result.json, oof.csv, csv/metrics.csv)
#
# Usage (DATA: a dataset root with train/ and test/, e.g. Kaggle's flat cat.N.jpg layout):
#   DATA=path/to/dogs-vs-cats OUT=gpu-results bash bench/gpu_recipe.sh [extra train.py overrides]
# STAGES=recipe or STAGES=bench runs one half only.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:?set DATA to the dataset root (train/ and test/)}
OUT=${OUT:-gpu-results}
STAGES=${STAGES:-recipe,bench}
WORKERS=${WORKERS:-$(python -c "import os; print(max(1, min(8, (os.cpu_count() or 2) - 1)))")}
mkdir -p "$OUT"

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
    python -c "import torch, torchvision, pytorch_lightning as pl; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'lightning', pl.__version__, 'cuda', torch.cuda.is_available())"
    echo "cpus $(nproc)"
} | tee "$OUT/machine.txt"

if [[ $STAGES == *recipe* ]]; then
    RUN="$OUT/run"
    if [[ -e $RUN/result.json ]]; then
        echo "$RUN already holds a finished run; remove it or choose another OUT" >&2
        exit 2
    fi
    start=$(date +%s)
    python train.py experiment=vgg16_bn_scratch data.dir="$DATA" data.num_workers="$WORKERS" \
        hydra.run.dir="$RUN" trainer.enable_progress_bar=false "$@" 2>&1 | tee "$OUT/train.log"
    train_s=$(($(date +%s) - start))
    start=$(date +%s)
    python predict.py ckpt="$RUN" tta=5 num_workers="$WORKERS" output="$OUT/submission.csv" overwrite=true \
        2>&1 | tee "$OUT/predict.log"
    predict_s=$(($(date +%s) - start))
    # The run's own validation images (its split.csv), scored with and without TTA and temperature.
    for tta in 0 5; do
        for cal in false true; do
            python predict.py ckpt="$RUN" input="$RUN/split.csv" labelled=true tta=$tta calibrate=$cal \
                num_workers="$WORKERS" output="$OUT/val_tta${tta}_cal${cal}.csv" overwrite=true \
                > "$OUT/val_tta${tta}_cal${cal}.log" 2>&1
        done
    done
    python bench/recipe_report.py "$RUN" "$OUT" --train-seconds "$train_s" --predict-seconds "$predict_s" \
        --command "python train.py experiment=vgg16_bn_scratch data.dir=DATA $*" | tee "$OUT/recipe.md"
fi

if [[ $STAGES == *bench* ]]; then
    # end-to-end / model-only images/s of both training pipelines at 112, 144 and 176 px (eager)
    python bench/pipeline_throughput.py --data "$DATA/train" --device cuda --sizes 112,144,176 --steps 40 \
        --warmup 8 --workers "$WORKERS" 2>&1 | tee "$OUT/pipeline_throughput.log" | grep -E "^\||images/s" \
        | tee "$OUT/pipeline_throughput.md"
    python bench/train_throughput.py --device cuda --data "$DATA/train" --width 1 --image-size 176 \
        --batch-sizes 64,128,256 --steps 50 --warmup 10 --workers "$WORKERS" | tee "$OUT/train_throughput.md"
    python bench/predict_throughput.py --device cuda --data "$DATA/test" --images 2000 --width 1 --image-size 176 \
        --batch-size 128 --workers "$WORKERS" --repeats 20 | tee "$OUT/predict_throughput.md"
fi
echo "figures in $OUT"
