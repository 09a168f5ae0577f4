#!/usr/bin/env bash
# GPU code paths, a few steps each: synth on CUDA, every objective mix in bf16-mixed, FSDP and DeepSpeed ZeRO-2/3
# through Lightning on one GPU (the same fragments as on 8), a LoRA student under ZeRO-2, and the CUDA-only test.
#   source experiments/gpu/env.sh && bash experiments/gpu/check.sh [WORK_DIR]
# Prints one PASS / FAIL line per check (full logs in WORK_DIR/logs/) and exits non-zero if any failed.
set -u
W=${1:-/tmp/vdistill-gpu-check}
mkdir -p "$W/logs"
fails=0
check() {  # check NAME COMMAND...
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$W/logs/$name.log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)"
  else echo "FAIL $name ($((SECONDS - t0)) s): $(grep -E 'Error|error' "$W/logs/$name.log" | tail -1)"; fails=$((fails + 1)); fi
}
STEPS=(--trainer.max_steps 6 --trainer.log_every_n_steps 2)
DEMO=(fit --config src/vdistill/recipes/demo.yaml --data.init_args.root "$W/synvid")
TURBO=(fit --config experiments/toy/turbo/turbo.yaml --config experiments/toy/turbo/turbo_both.yaml --trainer.callbacks=[])
ONLINE=(--model.init_args.target_ema_decay=null)  # the EMA target needs whole parameters: not under FSDP / ZeRO-3
GPU=(--trainer.accelerator gpu --trainer.devices 1)

check synth_cuda vdistill synth --model toy-flow --key-indices 0,25,50 --out "$W/synvid" --device cuda
check traj_adv_reward_ema_bf16 vdistill "${DEMO[@]}" --config callbacks/ema.yaml --config callbacks/adapter_checkpoints.yaml \
  "${GPU[@]}" --trainer.precision bf16-mixed "${STEPS[@]}" --trainer.default_root_dir "$W/demo_bf16"
check traj_adv_reward_fsdp vdistill "${DEMO[@]}" --config experiments/strategies/fsdp.yaml \
  --config callbacks/adapter_checkpoints.yaml "${STEPS[@]}" --trainer.default_root_dir "$W/demo_fsdp"
check traj_adv_reward_zero2 vdistill "${DEMO[@]}" --config experiments/strategies/deepspeed_zero2.yaml \
  --config callbacks/adapter_checkpoints.yaml "${STEPS[@]}" --trainer.default_root_dir "$W/demo_zero2"
check traj_adv_reward_zero3 vdistill "${DEMO[@]}" --config experiments/strategies/deepspeed_zero3.yaml \
  --config callbacks/adapter_checkpoints.yaml "${STEPS[@]}" --trainer.default_root_dir "$W/demo_zero3"
check cd_reward_bf16 vdistill "${TURBO[@]}" "${GPU[@]}" --trainer.precision bf16-mixed "${STEPS[@]}" \
  --config callbacks/adapter_checkpoints.yaml --trainer.default_root_dir "$W/turbo_bf16"
check cd_reward_fsdp vdistill "${TURBO[@]}" --config experiments/strategies/fsdp.yaml "${STEPS[@]}" "${ONLINE[@]}" \
  --config callbacks/adapter_checkpoints.yaml --trainer.default_root_dir "$W/turbo_fsdp"
check cd_reward_lora_zero2 vdistill "${TURBO[@]}" --config experiments/strategies/deepspeed_zero2.yaml "${STEPS[@]}" \
  --model.init_args.student.mode lora --model.init_args.student.lora_rank 8 \
  --config callbacks/adapter_checkpoints.yaml --trainer.default_root_dir "$W/turbo_lora_zero2"
check cd_reward_zero3 vdistill "${TURBO[@]}" --config experiments/strategies/deepspeed_zero3.yaml "${STEPS[@]}" "${ONLINE[@]}" \
  --config callbacks/adapter_checkpoints.yaml --trainer.default_root_dir "$W/turbo_zero3"
check sample_cuda vdistill sample --model toy-ddpm --steps 4 --prompts toy --out "$W/sample" --device cuda --mp4 0
check pytest_cuda python3 -m pytest -q -p no:cacheprovider tests/callbacks/test_throughput_memory.py
echo "$fails check(s) failed"
exit $((fails > 0))
