#!/usr/bin/env bash
# The two variant sweeps (experiments/toy/turbo/turbo_variants.yaml, experiments/toy/accvideo/accvideo_variants.yaml) on one GPU,
# all eight runs side by side (one `vdistill sweep --only RUN` each), then their benches and results tables.
#   source experiments/gpu/env.sh && bash experiments/gpu/variants.sh [OUT_DIR]
# OUT_DIR gets variants.tgz (tables, samples, event files, fit logs).
set -u
OUT_DIR=${1:-runs/gpu}
mkdir -p "$OUT_DIR"
VD=(python3 -m vdistill.cli)
[ -f runs/toy/accvideo/synvid_m2/manifest.json ] || make accvideo-synth DEVICE=cuda STAMP= VD="${VD[*]}" >/dev/null
t0=$SECONDS
sweep() {  # sweep FILE RUN...
  local file=$1; shift
  for run in "$@"; do
    "${VD[@]}" sweep "$file" --config experiments/gpu/one_gpu.yaml --only "$run" --quiet >"$OUT_DIR/$run.log" 2>&1 &
  done
}
sweep experiments/toy/turbo/turbo_variants.yaml online-lr2e-4 online-lr5e-5 ema-lr2e-4 ema-lr5e-5
sweep experiments/toy/accvideo/accvideo_variants.yaml long long_ema long_reward long_reward_ema
wait
echo "8 runs in $((SECONDS - t0)) s"
for name in turbo accvideo; do
  "${VD[@]}" bench "experiments/toy/${name}_variants_bench.yaml" --device cuda --mp4 0 | tail -12
  "${VD[@]}" sweep "experiments/toy/${name}_variants.yaml" --config experiments/gpu/one_gpu.yaml --quiet | tail -8
done
tar czf "$OUT_DIR/variants.tgz" --exclude='*.ckpt' --exclude='*.safetensors' runs/toy/turbo_variants \
  runs/toy/accvideo_variants "$OUT_DIR"/*.log
