#!/usr/bin/env bash
# The AccVideo and T2V-Turbo toy tables on one GPU: the six students side by side, then both benches, and the
# FSDP gradient-clipping check (T2V-Turbo's recipe clips at norm 1.0).
#   source experiments/gpu/env.sh && bash experiments/gpu/distill.sh [OUT_DIR]
# OUT_DIR gets accvideo.tgz and turbo.tgz (tables, samples, event files, fit logs).
set -u
OUT_DIR=${1:-runs/gpu}
mkdir -p "$OUT_DIR"
t0=$SECONDS
timeout 470 make -j6 turbo accvideo DEVICE=cuda STAMP= VD="python3 -m vdistill.cli" BENCH_FLAGS="--mp4 0" \
  >"$OUT_DIR/make.log" 2>&1
echo "make rc $? in $((SECONDS - t0)) s"
for run in turbo accvideo; do
  tar czf "$OUT_DIR/$run.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='synvid*' runs/toy/$run
done
W=/tmp/vdistill-gpu-check
python3 -m vdistill.cli fit --config experiments/toy/turbo/turbo.yaml --config experiments/toy/turbo/turbo_both.yaml \
  --trainer.callbacks=[] --config experiments/strategies/fsdp.yaml --trainer.max_steps 6 \
  --model.init_args.target_ema_decay=null \
  --trainer.default_root_dir $W/turbo_fsdp >"$OUT_DIR/fsdp_clip.log" 2>&1 && echo "PASS cd_reward_fsdp (clip 1.0)" \
  || { echo "FAIL cd_reward_fsdp"; tail -5 "$OUT_DIR/fsdp_clip.log"; }
python3 -m pytest -q -p no:cacheprovider tests/callbacks/test_throughput_memory.py 2>&1 | tail -2
