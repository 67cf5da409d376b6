#!/usr/bin/env bash
# The whole pipeline at small scale, from nothing, on a laptop CPU (about 10 minutes on 2 cores):
#   generate images -> persistent homology -> pretrain -> fine-tune on real digits -> evaluate -> pictures.
# Every setting lives in the variables below: edit them (or override from the environment) and rerun.
# A rerun skips what is already done (images, diagrams); training runs are written to new dated folders.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"

OUT="${OUT:-quickstart_out}"          # everything this script writes goes here
N_IMAGES="${N_IMAGES:-2000}"          # synthetic pretraining images
IMG_SIZE="${IMG_SIZE:-48}"            # side of the generated images
CROP="${CROP:-40}"                    # pretraining crop (the network input)
ARCH="${ARCH:-resnet18}"              # any torchvision classification model
LABEL="${LABEL:-persistence_image}"   # persistence_image (best in bench/transfer.py, BENCHMARKS.md) | histogram | betti_curve | landscape
DIMS="${DIMS:-200}"                   # length of the PH label vector
PRE_EPOCHS="${PRE_EPOCHS:-5}"         # pretraining epochs
FT_EPOCHS="${FT_EPOCHS:-10}"          # fine-tuning epochs
LABELS_PER_CLASS="${LABELS_PER_CLASS:-20}"  # real labelled digits per class (the low-label regime)
WORKERS="${WORKERS:-2}"
SEED="${SEED:-0}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

step() { printf '\n=== %s\n' "$*"; }

step "1/6 generate $N_IMAGES synthetic images ($IMG_SIZE px)"
python util/random_image.py -o "$OUT/random" -n "$N_IMAGES" -is "$IMG_SIZE" -pb 0.5 -pc 0.5 \
    -nw "$WORKERS" --seed "$SEED" --format png

step "2/6 persistent homology -> $LABEL labels of dimension $DIMS"
python PHdict.py "$OUT/random" -o "$OUT/PH_random" -it png -nw "$WORKERS" \
    --label_type "$LABEL" --numof_dims "$DIMS" --plot 4

step "3/6 pretrain $ARCH to regress the labels"
python pretraining.py -t "$OUT/random" -pd "$OUT/PH_random" -pc --label_type "$LABEL" -nc "$DIMS" \
    -u "$ARCH" --img_size "$IMG_SIZE" --crop_size "$CROP" -e "$PRE_EPOCHS" -b 64 -nw 1 \
    --lr_pre 0.05 -op sgd_cos --seed "$SEED" -o "$OUT/weights" -oti 32
PRETRAINED="$(ls -td "$OUT"/weights/*/ | head -n 1)${ARCH}_epoch${PRE_EPOCHS}.pth"

step "4/6 a small real dataset: scikit-learn's handwritten digits, $LABELS_PER_CLASS labels per class"
DIGITS="$OUT/data/digits_k$LABELS_PER_CLASS"
python scripts/export_digits.py -o "$DIGITS" --labels_per_class "$LABELS_PER_CLASS" --seed "$SEED"

step "5/6 fine-tune: from the PH-pretrained weights, and from scratch for comparison"
FT=(-t "$DIGITS/train" -val "$DIGITS/val" -u "$ARCH" -nc 10 -e "$FT_EPOCHS" --img_size 32 --crop_size 32
    -b 32 -nw 1 --lr_fine 0.02 -op sgd_cos --seed "$SEED" --no-hflip)   # no mirror images of digits (BENCHMARKS.md)
python finetuning.py "${FT[@]}" -pw "$PRETRAINED" -o "$OUT/finetune_pretrained"
python finetuning.py "${FT[@]}" -o "$OUT/finetune_scratch"

step "6/6 summary page"
python scripts/summary.py "$OUT" -o "$OUT/summary.png"
echo
echo "done: open $OUT/summary.png (pictures and numbers of every step)"
