#!/usr/bin/env bash
# experiments/toy/accvideo/accvideo_scale.yaml on one GPU, one phase per device call (each under 10 minutes):
#   source experiments/gpu/env.sh && bash experiments/gpu/accvideo_scale.sh [b16|b64|b12k|long] [OUT_DIR]
# b16: the 384- and 3,072-trajectory sets and the eight batch-16 students side by side (one `vdistill sweep --only
# RUN` each; the 384 runs start while the 3,072 set is written), then accvideo_scale_bench.yaml.
# b64: the 3,072- and 6,144-trajectory sets and the five batch-64 students, then accvideo_scale_b64_bench.yaml.
# b12k: the 12,288-trajectory set and two batch-64 students, then accvideo_scale_12k_bench.yaml.
# long: the 12,288 set (written at batch 256) and the 96-trajectory held-out set, two students (6,000 steps at batch 64;
# 3,000 at batch 256), then accvideo_scale_long_bench.yaml.
# keys: the 6,144 set and its held-out set again with the key points 0, 15, 25, 35, 50; four students on subsets of them
# (2 steps with the middle key point at index 15, 25 or 35; 3 steps on 0, 15, 35, 50), then accvideo_keys_bench.yaml.
# Fits stop at trainer.max_time (4 min 40 s for b16, 6 min for b64, 5 min for b12k and long: the call's limit) and
# still export.
# OUT_DIR gets scale_PHASE.tgz (table, samples, event files, logs) and best_PHASE.tgz (the best 2-step student).
set -u -o pipefail
PHASE=${1:-b16}
OUT_DIR=${2:-runs/gpu}
mkdir -p "$OUT_DIR"
VD=(python3 -m vdistill.cli)
SWEEP=experiments/toy/accvideo/accvideo_scale.yaml
t0=$SECONDS
synth() {  # synth SECONDS REPEAT OUT [SEED [BATCH]]
  timeout "$1" "${VD[@]}" synth --seed "${4:-0}" --model toy-flow --prompts toy --repeat "$2" --key-indices "${KEYS:-0,25,50}" --dtype float32 \
    --batch-size "${5:-64}" --device cuda --out "$3" 2>&1 | tail -1 && echo "  at $((SECONDS - t0)) s"
}
fit() {
  for run in "$@"; do
    "${VD[@]}" sweep $SWEEP --config experiments/gpu/one_gpu.yaml --config /tmp/cap.yaml --only "$run" --quiet \
      >"$OUT_DIR/$run.log" 2>&1 &
  done
}
case $PHASE in
  b16)
    printf 'trainer:\n  max_time: "00:00:04:40"\n' >/tmp/cap.yaml
    bench=experiments/toy/accvideo/accvideo_scale_bench.yaml
    synth 100 8 runs/toy/accvideo/synvid_m2
    fit m2_traj_384 m2_rollout_384
    synth 150 64 runs/toy/accvideo/synvid_m2_3k
    fit m2_traj_3k m2_paired_3k m2_rollout_3k m2_rollout_adv0.5_3k m1_traj_3k m1_rollout_3k ;;
  b64)
    printf 'trainer:\n  max_time: "00:00:06:00"\n' >/tmp/cap.yaml
    bench=experiments/toy/accvideo/accvideo_scale_b64_bench.yaml
    synth 60 64 runs/toy/accvideo/synvid_m2_3k
    fit m2_traj_3k_b64
    synth 100 128 runs/toy/accvideo/synvid_m2_6k
    fit m2_traj_6k_b64 m2_paired_6k_b64 m2_rollout_6k_b64 m1_traj_6k_b64 ;;
  b12k)
    printf 'trainer:\n  max_time: "00:00:05:00"\n' >/tmp/cap.yaml
    bench=experiments/toy/accvideo/accvideo_scale_12k_bench.yaml
    synth 150 256 runs/toy/accvideo/synvid_m2_12k 100000
    fit m2_traj_12k_b64 m2_traj_12k_b64_ema ;;
  long)
    printf 'trainer:\n  max_time: "00:00:05:00"\n' >/tmp/cap.yaml
    bench=experiments/toy/accvideo/accvideo_scale_long_bench.yaml
    synth 30 2 runs/toy/accvideo/synvid_m2_val 10000
    synth 150 256 runs/toy/accvideo/synvid_m2_12k 100000 256
    fit m2_traj_12k_b64_6k_steps m2_traj_12k_b256 ;;
  keys)
    printf 'trainer:\n  max_time: "00:00:05:00"\n' >/tmp/cap.yaml
    bench=experiments/toy/accvideo/accvideo_keys_bench.yaml
    export KEYS=0,15,25,35,50
    synth 40 2 runs/toy/accvideo/synvid_keys_val 10000
    synth 120 128 runs/toy/accvideo/synvid_keys_6k 0 256
    fit m2_mid15_6k_b64 m2_mid25_6k_b64 m2_mid35_6k_b64 m3_keys_6k_b64 ;;
  adv)
    printf 'trainer:\n  max_time: "00:00:04:20"\n' >/tmp/cap.yaml
    bench=experiments/toy/accvideo/accvideo_adv_bench.yaml
    synth 100 128 runs/toy/accvideo/synvid_m2_6k 0 256
    fit m2_paired_6k_b64 m2_rollout_6k_b64 ;;
  *) echo "unknown phase $PHASE: b16, b64, b12k, long, keys or adv" >&2; exit 2 ;;
esac
wait
echo "fits done at $((SECONDS - t0)) s"
"${VD[@]}" bench $bench --device cuda --mp4 0 | tail -10
out=$(python3 -c "import yaml; print(yaml.safe_load(open('$bench'))['out'])")
echo "all done at $((SECONDS - t0)) s"
tar czf "$OUT_DIR/scale_$PHASE.tgz" --exclude='*.ckpt' --exclude='*.safetensors' "$out" runs/toy/accvideo_scale \
  "$OUT_DIR"/*.log
best=$(python3 -c "import json; rows = json.load(open('$out/toybench.json')); \
print(max((n for n in rows if n.startswith('m2_')), key=lambda n: rows[n]['quality']))") \
  && tar czf "$OUT_DIR/best_$PHASE.tgz" "runs/toy/accvideo_scale/$best/export" && echo "best 2-step student: $best"
