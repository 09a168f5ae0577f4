#!/usr/bin/env bash
# The GPU check of docs/profile.md ("The GPU check"): `vdistill profile --measure` for the Wan2.1-1.3B recipe of
# every method (random weights from the shipped configs) at 81 x 480 x 832, again at 81 x 240 x 416 when a run fails
# for memory, then one summary table. One command on a bare GPU machine, from the repository root:
#   bash experiments/gpu/real_scale.sh [OUT_DIR]                    (default runs/gpu/real_scale)
#   DRY_RUN=1 bash experiments/gpu/real_scale.sh OUT_DIR            (the same path on the CPU: toy recipes, tiny size)
# It uses .venv/bin/vdistill when there is one, else `vdistill` on PATH, else sources experiments/gpu/env.sh.
# OUT_DIR gets, per run, NAME_SIZE.json (every figure), NAME_SIZE.txt (the table) and NAME_SIZE.log (stderr), and
# summary.txt (the table printed at the end).
#
# Each run: the profile's trace on the CPU, the models built on the GPU, 1 warm-up + 1 timed training step (one
# unsharded rank, AdamW), then one video of the student and (once per size) of the teacher, each after a warm-up
# video of one denoising step. A teacher is timed in the first run that uses it at a size (same teacher spec and
# precision: the three Wan recipes share Wan2.1-1.3B in bf16) and its time reused for the speed-up of the others
# (--measure-videos student). The predictions are for one
# rank (--devices 1), the measured run's setting. A step the profile's own trace says cannot fit (weights on the GPU
# + traced activations over its memory) stops before it runs, with "out of memory" in its log, like a CUDA OOM.
#
# Time budget on one H100 (estimates from the profile's FLOP counts, `vdistill profile --config RECIPE --devices 1`,
# at an assumed ~40% of the bf16 peak, ~400 TFLOP/s; not measured yet), 8 minutes in all:
#   accvideo 480p  ~230 s: start + trace ~40 s, build ~15 s, 2 steps of 12.9 PFLOP ~65 s, teacher video (50 steps x
#                  CFG, 28.6 PFLOP) ~75 s + its warm-up ~10 s, student video (5 steps, 1.7 PFLOP) + warm-up ~15 s
#   dmd 480p      ~110 s: start + trace ~45 s, build ~20 s, 2 steps ~25 s, the student's video and its warm-up ~15 s
#   turbo 480p     ~60 s: start + trace ~40 s, build (critics too) ~20 s, then refused: the reward decode with
#   turbo 240p     ~60 s:   gradients at 81 frames needs hundreds of GiB by the recipe's own estimate; 240p likewise
#                           unless it fits (then ~40 s more for its steps and videos at 240p)
# ~460 s if all goes as estimated: the DEADLINE below cuts the last run (turbo at 240p) rather than the 8 minutes.
# SIZES (default "81x480x832 81x240x416"; "own" = the recipe's own clip size) lists the sizes tried in turn.
# DEADLINE (seconds, default 450) caps the whole: each run gets `timeout` for what is left, a run that had no time
# left is listed as skipped, and the summary always prints.
set -u -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-runs/gpu/real_scale}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 1
DEADLINE=${DEADLINE:-450}  # against SECONDS: from the start of the script, env.sh included

if [ -x .venv/bin/vdistill ]; then VD=(.venv/bin/vdistill); PY=.venv/bin/python
elif command -v vdistill >/dev/null 2>&1; then VD=(vdistill); PY=python3
else
  # shellcheck source=experiments/gpu/env.sh
  source experiments/gpu/env.sh || exit 1
  VD=(python3 -m vdistill.cli); PY=python3
fi

if [ "${DRY_RUN:-0}" = 1 ]; then  # toy recipes at their own tiny size, the measurement on the CPU
  RECIPES=(toy_accvideo:experiments/toy/accvideo/accvideo.yaml toy_turbo:experiments/toy/turbo/turbo.yaml
           toy_dmd:experiments/toy/accvideo/accvideo.yaml+experiments/toy/dmd/dmd.yaml)
  SIZES=(own)
  MEASURE=(--measure --measure-device cpu --measure-warmup 1 --measure-steps 1 --batch 2)
else
  # turbo last: its reward decode with gradients is the likeliest not to fit, and the last to lose time to DEADLINE
  RECIPES=(accvideo_1.3b:experiments/wan/accvideo_1.3b.yaml dmd_1.3b:experiments/wan/dmd_1.3b.yaml
           turbo_1.3b:experiments/wan/turbo_1.3b.yaml)
  read -ra SIZES <<<"${SIZES:-81x480x832 81x240x416}"
  MEASURE=(--measure --measure-warmup 1 --measure-steps 1)
fi

# the teacher as a recipe names it, and the precision it runs in: runs with equal keys at one size share its video
TEACHER_KEY='import json, sys; from vdistill.profile.recipe import read_recipe
r = read_recipe(sys.argv[1:]); print(json.dumps([r.teacher, r.precision], sort_keys=True))'
declare -A TEACHER_TIMED=()  # teacher key + size -> 1 once a run has timed that teacher's video at that size
for entry in "${RECIPES[@]}"; do
  name=${entry%%:*}
  rm -f "$OUT/$name"_*.json "$OUT/$name"_*.txt "$OUT/$name"_*.log  # an earlier run's files would mix in
  configs=()
  IFS=+ read -ra files <<<"${entry#*:}"
  for f in "${files[@]}"; do configs+=(--config "$f"); done
  teacher=$(PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$PY" -c "$TEACHER_KEY" "${files[@]}") || teacher=$name
  for size in "${SIZES[@]}"; do
    tag=${name}_${size}
    size_args=()
    if [ "$size" != own ]; then
      IFS=x read -r frames height width <<<"$size"
      size_args=(--frames "$frames" --height "$height" --width "$width")
    fi
    videos=both key="$teacher@$size"
    [ -n "${TEACHER_TIMED[$key]:-}" ] && videos=student
    left=$((DEADLINE - SECONDS))
    if [ "$left" -le 10 ]; then
      echo "skipped: no time left" >"$OUT/$tag.log"; echo "$tag: skipped (DEADLINE ${DEADLINE} s reached)"; break
    fi
    start=$SECONDS
    timeout "$left" "${VD[@]}" profile "${configs[@]}" "${size_args[@]}" --devices 1 "${MEASURE[@]}" \
      --measure-videos "$videos" --json "$OUT/$tag.json" >"$OUT/$tag.txt" 2>"$OUT/$tag.log"
    rc=$?
    echo "$tag: exit $rc after $((SECONDS - start)) s (at $SECONDS s)"
    [ "$rc" = 124 ] && echo "timed out after $((SECONDS - start)) s (DEADLINE ${DEADLINE} s)" >>"$OUT/$tag.log"
    if [ "$rc" = 0 ]; then
      [ "$videos" = both ] && TEACHER_TIMED[$key]=1
      break
    fi
    rm -f "$OUT/$tag.json"
    grep -qiE "out of memory|OutOfMemoryError" "$OUT/$tag.log" "$OUT/$tag.txt" || break  # only memory falls back
  done
done

PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$PY" - "$OUT" "${RECIPES[@]}" <<'EOF' | tee "$OUT/summary.txt"
import json
import sys
from pathlib import Path

from vdistill.profile.recipe import read_recipe

out, names = Path(sys.argv[1]), [e.split(":", 1)[0] for e in sys.argv[2:]]
GIB = 1024**3
done, failed = {}, {}  # recipe -> (size, figures); recipe -> why each size failed
for name in names:
    for log in sorted(out.glob(f"{name}_*.log"), key=lambda p: p.stat().st_mtime):
        size, figures = log.stem[len(name) + 1:], log.with_suffix(".json")
        if figures.is_file():
            done[name] = (size, json.loads(figures.read_text()))
        else:
            lines = log.read_text().strip().splitlines() or ["no output"]
            failed.setdefault(name, []).append(f"{size}: {lines[-1][:100]}")
def teacher_key(data: dict, size: str) -> str:
    r = read_recipe(data["recipe"])  # as the loop above keys it
    return json.dumps([r.teacher, r.precision], sort_keys=True) + " " + size


teacher = {}  # teacher key + size -> (seconds per video, the run that timed it)
for name, (size, data) in done.items():
    videos = data["measured"].get("videos", {})
    if "teacher" in videos:
        teacher.setdefault(teacher_key(data, size), (videos["teacher"]["seconds"], name))
head = ("recipe", "size", "pred. peak", "meas. peak", "step", "TFLOP/s", "MFU", "teacher", "student", "speed-up",
        "limit")
rows = []
for name in names:
    if name not in done:
        rows.append((name, "FAILED " + "; ".join(failed.get(name, ["not run"]))))
        continue
    size, data = done[name]
    m = data["measured"]
    t, v = teacher.get(teacher_key(data, size)), m.get("videos", {})
    s = v["student"]["seconds"] if "student" in v else None
    rows.append((name, size, f"{data['memory_per_rank_bytes']['peak'] / GIB:.1f} GiB",
                 "-" if m["peak_bytes"] is None else f"{m['peak_bytes'] / GIB:.1f} GiB", f"{m['step_s']:.2f} s",
                 f"{m['tflops']:.3g}", "-" if m["mfu"] is None else f"{m['mfu']:.1%}",
                 "-" if t is None else f"{t[0]:.3g} s" + ("" if t[1] == name else f" ({t[1]})"),
                 "-" if s is None else f"{s:.3g} s", f"{t[0] / s:.1f}x" if t and s else "-",
                 f"{data['video']['speedup_limit']:.1f}x"))
device = next((data["measured"]["device"] for _, data in done.values()), "no device")
print(f"\nvdistill profile --measure on {device}: one unsharded rank, random weights, predicted peak for one rank "
      "(--devices 1); teacher / student: seconds per video (text encoding + denoising + VAE decode); speed-up: "
      "measured, limit: from the FLOPs")
full = [r for r in rows if len(r) == len(head)]
widths = [max(len(r[i]) for r in [head, *full]) for i in range(len(head))]
print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() if len(r) == len(head)
          else f"{r[0].ljust(widths[0])}  {r[1]}")
EOF
echo "done in $SECONDS s; files in $OUT"
