#!/usr/bin/env bash
# experiments/toy/accvideo_scale.yaml on one GPU: both trajectory sets, the eight students side by side (one
# `vdistill sweep --only RUN` each; the 384-trajectory runs start while the 3,072-trajectory set is written), then
# the bench on held-out noise and the sweep's results table.
#   source experiments/gpu/env.sh && bash experiments/gpu/accvideo_scale.sh [OUT_DIR]
# OUT_DIR gets scale.tgz (table, samples, event files, logs) and best_export.tgz (the best 2-step student).
set -u -o pipefail
OUT_DIR=${1:-runs/gpu}
mkdir -p "$OUT_DIR"
VD=(python3 -m vdistill.cli)
SWEEP=experiments/toy/accvideo_scale.yaml
t0=$SECONDS
synth() {  # synth SECONDS REPEAT OUT
  timeout "$1" "${VD[@]}" synth --model toy-flow --prompts toy --repeat "$2" --key-indices 0,25,50 --dtype float32 \
    --batch-size 64 --device cuda --out "$3" 2>&1 | tail -2
}
printf 'trainer:\n  max_time: "00:00:04:40"\n' >/tmp/cap.yaml  # the device call's limit: stop (and export) early
fit() {
  for run in "$@"; do
    "${VD[@]}" sweep $SWEEP --config experiments/gpu/one_gpu.yaml --config /tmp/cap.yaml --only "$run" --quiet >"$OUT_DIR/$run.log" 2>&1 &
  done
}
synth 100 8 runs/toy/accvideo/synvid_m2 && echo "384 set at $((SECONDS - t0)) s"
fit m2_traj_384 m2_rollout_384
synth 150 64 runs/toy/accvideo/synvid_m2_3k && echo "3,072 set at $((SECONDS - t0)) s"
fit m2_traj_3k m2_paired_3k m2_rollout_3k m2_rollout_adv0.5_3k m1_traj_3k m1_rollout_3k
wait
echo "fits done at $((SECONDS - t0)) s"
"${VD[@]}" bench experiments/toy/accvideo_scale_bench.yaml --device cuda --mp4 0 | tail -14
"${VD[@]}" sweep $SWEEP --config experiments/gpu/one_gpu.yaml --config /tmp/cap.yaml --quiet | tail -10
echo "all done at $((SECONDS - t0)) s"
tar czf "$OUT_DIR/scale.tgz" --exclude='*.ckpt' --exclude='*.safetensors' runs/toy/accvideo_scale "$OUT_DIR"/*.log
best=$(python3 -c "import json; rows = json.load(open('runs/toy/accvideo_scale/toybench.json')); \
print(max((n for n in rows if n.startswith('m2_')), key=lambda n: rows[n]['quality']))" 2>/dev/null) \
  && tar czf "$OUT_DIR/best_export.tgz" "runs/toy/accvideo_scale/$best/export" && echo "best 2-step student: $best"
