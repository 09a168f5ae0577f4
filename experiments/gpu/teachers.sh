#!/usr/bin/env bash
# Retrain both toy teachers side by side on one GPU, then bench them (the teacher table of docs/toy-world.md).
#   source experiments/gpu/env.sh && bash experiments/gpu/teachers.sh [STEPS] [OUT_DIR]
# STEPS: optimiser steps for each teacher (default: the recipes' max_steps). The shipped weights came from the
# recipes' own max_steps; see BENCHMARKS.md for the run. Exports are copied into src/vdistill/assets/ of THIS
# checkout (commit them to ship), the table goes to runs/toy/teachers/, and OUT_DIR gets a tarball of both.
set -eu
STEPS=${1:-}
OUT_DIR=${2:-runs/toy/teachers_gpu}
mkdir -p "$OUT_DIR"
extra=(--trainer.accelerator gpu --trainer.devices 1 --data.init_args.num_workers 6)
[ -n "$STEPS" ] && extra+=(--trainer.max_steps "$STEPS")
[ -n "${MAX_TIME:-}" ] && extra+=(--trainer.max_time "$MAX_TIME")  # a safety stop, DD:HH:MM:SS
t0=$SECONDS
for kind in flow ddpm; do
  vdistill fit --config "experiments/toy/teacher_$kind.yaml" "${extra[@]}" >"$OUT_DIR/fit_$kind.log" 2>&1 &
done
wait
echo "both teachers trained in $((SECONDS - t0)) s"
for kind in flow ddpm; do
  cp "runs/toy/teacher_$kind/export/backbone.yaml" "runs/toy/teacher_$kind/export/model.safetensors" \
    "src/vdistill/assets/toy-$kind/"
done
tar czf "$OUT_DIR/teachers.tgz" src/vdistill/assets/toy-flow src/vdistill/assets/toy-ddpm "$OUT_DIR"/fit_*.log \
  $(find runs/toy/teacher_flow runs/toy/teacher_ddpm -name 'events.out.tfevents*')
t0=$SECONDS
vdistill bench experiments/toy/teachers/teachers_bench.yaml --device cuda --mp4 0
echo "bench in $((SECONDS - t0)) s"
cp runs/toy/teachers/toybench.md runs/toy/teachers/toybench.json "$OUT_DIR/"
