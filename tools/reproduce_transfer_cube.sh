#!/usr/bin/env bash
# The proof-in-simulation experiment behind the README table and checkpoints/transfer_cube_default:
# scripted demonstrations -> two policies trained from scratch (uniform time vs the high-noise
# shift, same data, seeds and budget) -> 50 closed-loop episodes per cell through ROS.
# About 10 min of data, 60 min of training (both runs in parallel, one core each) and 35 min of
# real-time episodes on a 2-core CPU. Usage: tools/reproduce_transfer_cube.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-out/transfer_cube}
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST HF_HUB_OFFLINE=1 MUJOCO_GL=${MUJOCO_GL:-egl}
make venv
mkdir -p "$work"
vla=.venv/bin/vla-ros

# Seeds 0..199 (cube poses), rendered at 240x320: the size the policy learns from (it looks at a
# 96x96 region of it, config/train_transfer_cube.yaml) and that sim_node renders in sim-eval.
[ -d "$work/data" ] || $vla collect-sim --task transfer_cube --episodes 200 --image-size 240x320 --output "$work/data"

pids=()
for alpha in 4 1; do
  $vla train --config config/train_transfer_cube.yaml --dataset "$work/data" --output "$work/alpha$alpha" \
    --alpha "$alpha" --threads 1 --quiet > "$work/alpha$alpha.train.json" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a failed run stops here

# Held-out cube poses (seeds 1001..1050), the same for every cell.
for alpha in 4 1; do
  $vla sim-eval --checkpoint "$work/alpha$alpha/policy" --episodes 50 --steps 1,10 --seed 1000 \
    --report "$work/sim_eval_alpha$alpha.json" --video-dir "$work/videos_alpha$alpha" --videos 3
done
