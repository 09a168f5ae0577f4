# The two commands: `make demo` runs the main job, `make test` runs the tests. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean teachers teacher-table accvideo critics turbo

venv: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/vdistill demo --out runs/demo

# Retrain the shipped toy teachers (CPU, ~1 h each on 2 cores) and copy the exports into the package.
teachers: $(STAMP)
	$(VENV)/bin/vdistill fit --config experiments/toy/teacher_flow.yaml
	$(VENV)/bin/vdistill fit --config experiments/toy/teacher_ddpm.yaml
	cp runs/toy/teacher_flow/export/* src/vdistill/assets/toy-flow/
	cp runs/toy/teacher_ddpm/export/* src/vdistill/assets/toy-ddpm/

# The README's teacher table: both shipped teachers at 50, 8, 4, 2 and 1 steps (4 videos per toy prompt).
teacher-table: $(STAMP)
	$(VENV)/bin/vdistill bench experiments/toy/teachers_bench.yaml

# AccVideo in the toy world (issue 3): synthesise the flow teacher's trajectories (key points 0, 25, 50 of 50
# Euler + CFG steps), distil 2-step students with trajectory guidance alone and + adversarial alignment, then
# one ToyBench table with measured speed-ups under runs/toy/accvideo/.
accvideo: $(STAMP)
	$(VENV)/bin/vdistill synth --model toy-flow --prompts toy --repeat 8 --key-indices 0,25,50 --dtype float32 \
		--out runs/toy/accvideo/synvid_m2
	$(VENV)/bin/vdistill fit --config experiments/toy/accvideo.yaml --config experiments/toy/accvideo_traj_only.yaml
	$(VENV)/bin/vdistill fit --config experiments/toy/accvideo.yaml
	$(VENV)/bin/vdistill bench experiments/toy/accvideo_bench.yaml

# The toy critics (toy-image, toy-video), trained contrastively on the toy world and copied into the package.
critics: $(STAMP)
	$(VENV)/bin/vdistill fit --config experiments/toy/critics.yaml
	mkdir -p src/vdistill/assets/critics
	cp runs/toy/critics/export/toy-*.safetensors src/vdistill/assets/critics/
	$(VENV)/bin/vdistill critic-report --critic toy-image
	$(VENV)/bin/vdistill critic-report --critic toy-video

# T2V-Turbo in the toy world (issue 4): consistency distillation of the DDPM teacher alone (the VCM baseline) and
# with image, video and both toy rewards, then one ToyBench table (students at 4 and 2 steps) under runs/toy/turbo/.
turbo: $(STAMP)
	$(VENV)/bin/vdistill fit --config experiments/toy/turbo.yaml
	$(VENV)/bin/vdistill fit --config experiments/toy/turbo.yaml --config experiments/toy/turbo_image.yaml
	$(VENV)/bin/vdistill fit --config experiments/toy/turbo.yaml --config experiments/toy/turbo_video.yaml
	$(VENV)/bin/vdistill fit --config experiments/toy/turbo.yaml --config experiments/toy/turbo_both.yaml
	$(VENV)/bin/vdistill bench experiments/toy/turbo_bench.yaml

clean:
	rm -rf runs lightning_logs
