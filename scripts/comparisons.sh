#!/usr/bin/env bash
# Real results of docs/results.md "Comparing groups and models" (issue 9), on the shared data.
# Usage: scripts/comparisons.sh OUT_DIR [gender|models|all]   (CPU; run with nice)
# Several copies may run at once: each model run takes a lock folder OUT/models/NAME.lock
# (delete the locks to run them again).
set -euo pipefail
OUT=${1:?output folder}; WHAT=${2:-all}
DATA=${LAVISE_DATA:-$(dirname "$0")/../../shared/data}
LAVISE=${LAVISE:-lavise}
REF="coco-panoptic:$DATA/coco-panoptic"
mkdir -p "$OUT"
if [[ $WHAT == gender || $WHAT == all ]]; then
  G=$OUT/gender
  # 1. a gender classifier: EfficientNet-Lite0, new head + the last 3 stages trained
  $LAVISE finetune --model efficientnet-lite0 --labels captions:gender --images "$DATA/coco-gender/val2017" \
      --train last:3 --epochs 15 --out "$G/gender-lite0.safetensors" -q
  # 2. an explainer for its last layer, trained on COCO panoptic train2017
  $LAVISE train --model efficientnet-lite0 --weights "$G/gender-lite0.safetensors" --explainer trained \
      --reference "$REF" --split train2017 --out "$G/checkpoint" -q
  # 3. filters and words tied to each gender
  $LAVISE compare-groups --checkpoint "$G/checkpoint" --weights "$G/gender-lite0.safetensors" \
      --images "$DATA/coco-gender/val2017" --groups captions:gender --out "$G/compare" -q
fi
if [[ $WHAT == models || $WHAT == all ]]; then
  M=$OUT/models
  for spec in efficientnet-lite0 efficientnet-lite1 efficientnet-lite2 efficientnet-lite0:random-init; do
    model=${spec%%:*}; name=${spec/:/-}; weights=()
    [[ $spec == *random-init ]] && weights=(--weights random-init)
    mkdir -p "$M"; mkdir "$M/$name.lock" 2>/dev/null || continue  # done or running elsewhere
    $LAVISE train --model "$model" "${weights[@]}" --explainer trained --reference "$REF" --split train2017 \
        --out "$M/$name/checkpoint" -q
    $LAVISE explain --checkpoint "$M/$name/checkpoint" "${weights[@]}" --images "$REF" --split val2017 \
        --out "$M/$name" -q
  done
  $LAVISE compare-models --explanations "$M"/efficientnet-lite{0,1,2} --out "$M/lite0-lite1-lite2"
  $LAVISE compare-models --explanations "$M/efficientnet-lite0" "$M/efficientnet-lite0-random-init" \
      --names pretrained,random-init --out "$M/pretrained-vs-random"
fi
