# The two commands: `make demo` runs the main job, `make test` runs the tests. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean teachers teacher-table accvideo accvideo-synth accvideo-traj accvideo-adv critics \
	turbo turbo-cd turbo-image turbo-video turbo-both turbo-both-small \
	dmd dmd-m1 dmd-m2 dmd-m4 dmd-gan dmd-traj dmd-traj-long dmd-tg synvid-m2

# The long toy recipes below run on the CPU by default; DEVICE=cuda runs them on a GPU (fits with
# experiments/gpu/one_gpu.yaml: accelerator gpu, 4 data workers, throughput curves; synth and bench on cuda),
# and `make -j4` trains the independent runs side by side. VD: the vdistill command (a GPU machine without the venv:
# `make -j6 turbo accvideo DEVICE=cuda STAMP= VD="python3 -m vdistill.cli"` after `source experiments/gpu/env.sh`).
DEVICE ?= cpu
VD ?= $(VENV)/bin/vdistill
BENCH_FLAGS ?=                # e.g. --mp4 0 where imageio-ffmpeg is missing
ON_GPU := $(findstring cuda,$(DEVICE))
FIT_DEVICE := $(if $(ON_GPU),--config experiments/gpu/one_gpu.yaml)


venv: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 tests

demo: $(STAMP)
	$(VENV)/bin/vdistill demo --out runs/demo

# Retrain the shipped toy teachers and copy the exports into the package. The shipped weights: one H100, both
# side by side (`source experiments/gpu/env.sh && bash experiments/gpu/teachers.sh`), 9,000 steps in ~6 min.
teachers: $(STAMP)
	$(VD) fit --config experiments/toy/teachers/teacher_flow.yaml $(FIT_DEVICE)
	$(VD) fit --config experiments/toy/teachers/teacher_ddpm.yaml $(FIT_DEVICE)
	cp runs/toy/teacher_flow/export/* src/vdistill/assets/toy-flow/
	cp runs/toy/teacher_ddpm/export/* src/vdistill/assets/toy-ddpm/

# The teacher table of docs/toy-world.md: both shipped teachers at 50, 8, 4, 2 and 1 steps (4 videos per toy prompt).
teacher-table: $(STAMP)
	$(VD) bench experiments/toy/teachers/teachers_bench.yaml --device $(DEVICE) $(BENCH_FLAGS)

# AccVideo in the toy world (issue 3): synthesise the flow teacher's trajectories (key points 0, 25, 50 of 50
# Euler + CFG steps), distil 2-step students with trajectory guidance alone and + adversarial alignment, then
# one ToyBench table with measured speed-ups under runs/toy/accvideo/.
# The fits also log their loss on 96 held-out trajectories (experiments/toy/accvideo/heldout.yaml: val/trajectory).
synvid-m2: $(STAMP)
	$(VD) synth --model toy-flow --prompts toy --repeat 8 --key-indices 0,25,50 --dtype float32 \
		--out runs/toy/accvideo/synvid_m2 --device $(DEVICE)
accvideo-synth: synvid-m2
	$(VD) synth --model toy-flow --prompts toy --repeat 2 --seed 10000 --key-indices 0,25,50 --dtype float32 \
		--out runs/toy/accvideo/synvid_m2_val --device $(DEVICE)
accvideo-traj: accvideo-synth
	$(VD) fit --config experiments/toy/accvideo/accvideo.yaml --config experiments/toy/accvideo/accvideo_traj_only.yaml \
		--config experiments/toy/accvideo/heldout.yaml $(FIT_DEVICE)
accvideo-adv: accvideo-synth
	$(VD) fit --config experiments/toy/accvideo/accvideo.yaml --config experiments/toy/accvideo/heldout.yaml $(FIT_DEVICE)
accvideo: accvideo-traj accvideo-adv
	$(VD) bench experiments/toy/accvideo/accvideo_bench.yaml --device $(DEVICE) $(BENCH_FLAGS)

# The toy critics (toy-image, toy-video), trained contrastively on the toy world and copied into the package.
critics: $(STAMP)
	$(VD) fit --config experiments/toy/critics/critics.yaml $(FIT_DEVICE)
	mkdir -p src/vdistill/assets/critics
	cp runs/toy/critics/export/toy-*.safetensors src/vdistill/assets/critics/
	$(VD) critic-report --critic toy-image
	$(VD) critic-report --critic toy-video

# T2V-Turbo in the toy world (issue 4): consistency distillation of the DDPM teacher alone (the VCM baseline) and
# with image, video and both toy rewards (T2V-Turbo's betas, and both at 1/100 of them), then one ToyBench table
# (students at 4 and 2 steps) under runs/toy/turbo/.
turbo-cd: $(STAMP)
	$(VD) fit --config experiments/toy/turbo/turbo.yaml $(FIT_DEVICE)
turbo-image: $(STAMP)
	$(VD) fit --config experiments/toy/turbo/turbo.yaml --config experiments/toy/turbo/turbo_image.yaml $(FIT_DEVICE)
turbo-video: $(STAMP)
	$(VD) fit --config experiments/toy/turbo/turbo.yaml --config experiments/toy/turbo/turbo_video.yaml $(FIT_DEVICE)
turbo-both: $(STAMP)
	$(VD) fit --config experiments/toy/turbo/turbo.yaml --config experiments/toy/turbo/turbo_both.yaml $(FIT_DEVICE)
turbo-both-small: $(STAMP)
	$(VD) fit --config experiments/toy/turbo/turbo.yaml --config experiments/toy/turbo/turbo_both_small.yaml $(FIT_DEVICE)
turbo: turbo-cd turbo-image turbo-video turbo-both turbo-both-small
	$(VD) bench experiments/toy/turbo/turbo_bench.yaml --device $(DEVICE) $(BENCH_FLAGS)

# DMD2 in the toy world (issue 16): 1-, 2- and 4-step DMD2 students, DMD2 + its GAN term and DMD2 + trajectory
# guidance (100 student updates each: 500 global steps with fake_updates 5; what a 2-core machine fits in a session;
# dmd-traj-long: DMD2 + trajectory guidance to 300 and 500 updates),
# the trajectory-guidance student (600 updates, no held-out set: dmd-tg), then one ToyBench table with the
# trajectory-guidance student (accvideo-traj's run) and the teacher at 50 / 2 / 1 steps, every row on the same held-out
# seeds, paired differences against the 50-step teacher (docs/results/dmd_toy.md). `make -j2 dmd` trains two at once.
DMD_FIT := $(VD) fit --config experiments/toy/accvideo/accvideo.yaml --config experiments/toy/dmd/dmd.yaml
dmd-m1: synvid-m2
	$(DMD_FIT) --config experiments/toy/dmd/dmd_1step.yaml $(FIT_DEVICE)
dmd-m2: synvid-m2
	$(DMD_FIT) $(FIT_DEVICE)
dmd-m4: synvid-m2
	$(DMD_FIT) --config experiments/toy/dmd/dmd_4step.yaml $(FIT_DEVICE)
dmd-gan: synvid-m2
	$(DMD_FIT) --config experiments/toy/dmd/dmd_gan.yaml $(FIT_DEVICE)
dmd-traj: synvid-m2
	$(DMD_FIT) --config experiments/toy/dmd/dmd_traj.yaml $(FIT_DEVICE)
dmd-traj-long: synvid-m2  # dmd-traj to 500 student updates, and its 300-update checkpoint exported
	$(DMD_FIT) --config experiments/toy/dmd/dmd_traj.yaml --config experiments/toy/dmd/dmd_traj_long.yaml $(FIT_DEVICE)
	$(VD) export --ckpt runs/toy/dmd/m2_traj_long/checkpoints/epoch=62-step=1500.ckpt \
		--out runs/toy/dmd/m2_traj_long/export_1500
dmd-tg: synvid-m2       # accvideo-traj without the held-out loss (and its second set)
	$(VD) fit --config experiments/toy/accvideo/accvideo.yaml --config experiments/toy/accvideo/accvideo_traj_only.yaml $(FIT_DEVICE)
dmd: dmd-traj dmd-m2 dmd-m1 dmd-tg dmd-gan dmd-m4 dmd-traj-long
	$(VD) bench experiments/toy/dmd/dmd_bench.yaml --device $(DEVICE) $(BENCH_FLAGS)

clean:
	rm -rf runs lightning_logs
