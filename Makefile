# hmic — set-up and pipelines. Every target installs what it needs by itself.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
HMIC    := $(BIN)/hmic
STAMP   := $(VENV)/.installed
LOCK    := requirements.lock
METHODS ?= flat,levelwise,topdown,gap,lp,gmp,resatt
# Any depth: HIERARCHY=NAME_OR_FILE (a bundled taxonomy such as openmic-hornbostel-sachs, or a tree YAML, a
# node,parent CSV, an AudioSet FILE.json#Root; docs/taxonomies.md) makes demo, table1-synth and
# table1-frozen-synth train over it, with every head: the paper's seven and mcm (DEEP_METHODS). Their runs
# and results go to folders suffixed with HIERARCHY_NAME, apart from the 2-level ones. table1 and
# table1-frozen stay the paper's (METHODS, its 2-level hierarchy).
HIERARCHY      ?=
HIERARCHY_NAME ?= $(basename $(notdir $(HIERARCHY)))
DEEP_METHODS   ?= $(METHODS),mcm
GRID_METHODS   := $(if $(HIERARCHY),$(DEEP_METHODS),$(METHODS))
HIERARCHY_FLAG := $(if $(HIERARCHY),--hierarchy '$(HIERARCHY)')
AT_DEPTH       := $(if $(HIERARCHY),-$(HIERARCHY_NAME))
LAMBDAS := 0.7,0.75,0.8,0.85,0.9
SEEDS   ?= 8
# make table1 ENGINE=ray GPUS_PER_RUN=0.25 [RAY_ADDRESS=auto]: the grid over a Ray cluster.
ENGINE       ?= local
GPUS_PER_RUN ?=
RAY_ADDRESS  ?=
GRID_FLAGS   := --engine $(ENGINE)$(if $(GPUS_PER_RUN), --gpus-per-run $(GPUS_PER_RUN))$(if $(RAY_ADDRESS), --ray-address $(RAY_ADDRESS))

# make demo: a fresh stand-in dataset, all seven methods, a Table-1-shaped table, a tagged song.
DEMO        := data/demo
DEMO_DATA   := $(DEMO)/openmic-synth
DEMO_RUNS   := $(DEMO)/runs$(AT_DEPTH)
DEMO_SONG_RUNS := $(DEMO)/song-runs$(AT_DEPTH)
DEMO_RESULTS := results/demo$(AT_DEPTH)
DEMO_CLIPS  ?= 900

# make table1-synth: the paper's protocol on the stand-in dataset with the light backbone.
SYNTH_DATA  := data/synth
SYNTH_RUNS  := runs/synth$(AT_DEPTH)
SYNTH_CLIPS ?= 2000

# make soundfonts: MuseScore_General (Debian's musescore-general-soundfont-small, MIT), fetched with apt-get
# download and unpacked here (no root needed), for a stand-in rendered with several fonts.
SOUNDFONTS  := data/soundfonts
MUSESCORE   := $(SOUNDFONTS)/MuseScore_General_Lite.sf3

# make table1-frozen: the same grid under the frozen-backbone protocol (docs/frozen.md):
# the backbone embedded once ('hmic embed'), then only the heads train, on the cached embeddings.
FROZEN_BACKBONE ?=  # empty: the AudioSet CNN14 checkpoint of 'hmic download cnn14'
# make table1-frozen-synth: the stand-in's frozen grid over a fine-tuned stand-in run's backbone.
SYNTH_BACKBONE_RUN := $(SYNTH_RUNS)/gmp/lam0.80/seed0

.PHONY: help install sync lock test docs demo table1 table1-synth table1-frozen table1-frozen-synth soundfonts transfer clean

help:
	@echo "make demo          fresh clone -> stand-in dataset, Table-1-shaped table, predict a 75-s song"
	@echo "make test          install and run the test suite"
	@echo "make docs          the documentation site (MkDocs, --strict) into site/, CLI reference regenerated"
	@echo "make install       .venv with exactly requirements.lock (and repair a venv that drifted from it)"
	@echo "make lock          rewrite requirements.lock from .venv as it is (after a deliberate upgrade)"
	@echo "make table1        the paper's full protocol on the real OpenMIC-2018 with pretrained CNN14"
	@echo "make table1-synth  the same protocol on the stand-in dataset with the light backbone"
	@echo "                   (HIERARCHY=openmic-hornbostel-sachs: a 3-level tree, every head incl. mcm; also demo, table1-frozen-synth)"
	@echo "make table1-frozen the paper's grid under the frozen-backbone protocol (AudioSet CNN14 embedded once)"
	@echo "make table1-frozen-synth  the frozen grid on the stand-in, over a fine-tuned stand-in run's backbone"
	@echo "make soundfonts    fetch MuseScore_General (a second GM SoundFont) into $(SOUNDFONTS)"
	@echo "make transfer      leave-one-font-out transfer of the stand-in, before/after variety and augmentation"

# make install: .venv holds exactly requirements.lock (versions and hashes), then hmic itself (editable, no
# build isolation: setuptools and wheel come from the lock too). Nothing is taken from whatever the
# registry serves today. It also repairs a venv that drifted from the lock (what tools/lock.py check names).
install: $(STAMP)
	@$(BIN)/python tools/lock.py check > /dev/null 2>&1 || { echo "== .venv differs from $(LOCK): syncing it"; $(MAKE) --no-print-directory sync; }

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(MAKE) --no-print-directory sync
	touch $(STAMP)

sync:
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r $(LOCK)
	@$(BIN)/python tools/lock.py extras | xargs -r $(BIN)/python -m pip uninstall -q -y
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python tools/lock.py check

# make lock: write requirements.lock from the venv as it is (after a deliberate 'pip install' of a new or
# upgraded dependency into .venv); commit it with pyproject.toml.
lock:
	@test -x $(BIN)/python || { echo "no $(VENV): run 'make install' first"; exit 1; }
	$(BIN)/python tools/lock.py write
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python tools/lock.py check
	$(BIN)/python -m pytest -q --durations=15 tests

# make docs: the CLI reference regenerated from the Typer app, then the site built strictly (a broken link,
# a missing page or a docstring mkdocstrings cannot read fails) into site/.
docs: install
	$(BIN)/python tools/cli_reference.py
	$(BIN)/mkdocs build --strict --site-dir site

demo: install
	@echo "== 1/8  rendering a $(DEMO_CLIPS)-clip OpenMIC-format stand-in dataset into $(DEMO_DATA)"
	$(HMIC) synth --out $(DEMO_DATA) --clips $(DEMO_CLIPS) --seed 0
	@echo "== 2/8  carving a stratified validation set out of the train partition"
	$(HMIC) split --data-dir $(DEMO_DATA)
	@echo "== 3/8  computing the CNN14 log-mel features"
	$(HMIC) featurize --data-dir $(DEMO_DATA)
	@echo "== 4/8  training $(if $(HIERARCHY),every head ($(GRID_METHODS)) over $(HIERARCHY),all seven heads) on cnn14-light (configs/demo.yaml, 1 seed, CPU)"
	$(HMIC) train --config configs/demo.yaml --method $(GRID_METHODS) --seed 0 --data-dir $(DEMO_DATA) --runs-dir $(DEMO_RUNS) --resume $(HIERARCHY_FLAG)
	@echo "== 5/8  one longer gmp run for the song (configs/demo-song.yaml)"
	$(HMIC) train --config configs/demo-song.yaml --method gmp --seed 0 --data-dir $(DEMO_DATA) --runs-dir $(DEMO_SONG_RUNS) --resume $(HIERARCHY_FLAG)
	@echo "== 6/8  tuning per-tag thresholds (clips and whole songs) on validation"
	$(HMIC) tune-thresholds $(DEMO_RUNS) $(DEMO_SONG_RUNS)
	@echo "== 7/8  Table 1 on the stand-in test split ($(DEMO_RESULTS)/)"
	$(HMIC) table $(DEMO_RUNS) --out $(DEMO_RESULTS)
	@echo "== 8/8  a 75-s song the model never heard, tagged and shown against its truth ($(DEMO_RESULTS)/song.json)"
	$(HMIC) synth-song $(DEMO)/song.wav --seconds 75 --seed 7
	$(HMIC) predict $(DEMO)/song.wav --run $(DEMO_SONG_RUNS)/gmp/lam0.80/seed0 --explain --truth $(DEMO)/song.truth.json --json $(DEMO_RESULTS)/song.json
	@echo "== done. The demo's runs are in $(DEMO_RUNS)/ ($(if $(HIERARCHY),every head,all seven methods)) and $(DEMO_SONG_RUNS)/ (the song model):"
	@echo "   they are demonstration models trained on rendered General MIDI audio, not taggers for real music."
	@echo "   Tag your own audio with the song model:"
	@echo "   $(HMIC) predict YOUR_AUDIO --run $(DEMO_SONG_RUNS)/gmp/lam0.80/seed0"

table1: install
	$(HMIC) download all
	$(HMIC) split
	$(HMIC) featurize
	$(HMIC) train --config configs/paper.yaml --method $(METHODS) --lambdas $(LAMBDAS) --seeds $(SEEDS) --runs-dir runs/paper --resume $(GRID_FLAGS)
	$(HMIC) tune-thresholds runs/paper
	$(HMIC) table runs/paper --out results/table1

table1-synth: install
	$(HMIC) synth --out $(SYNTH_DATA) --clips $(SYNTH_CLIPS) --seed 0
	$(HMIC) split --data-dir $(SYNTH_DATA)
	$(HMIC) featurize --data-dir $(SYNTH_DATA)
	$(HMIC) train --config configs/synth.yaml --method $(GRID_METHODS) --lambdas $(LAMBDAS) --seeds $(SEEDS) --data-dir $(SYNTH_DATA) --runs-dir $(SYNTH_RUNS) --resume $(GRID_FLAGS) $(HIERARCHY_FLAG)
	$(HMIC) tune-thresholds $(SYNTH_RUNS)
	$(HMIC) table $(SYNTH_RUNS) --out results/table1-synth$(AT_DEPTH)

table1-frozen: install
	$(HMIC) download all
	$(HMIC) split
	$(HMIC) featurize
	$(HMIC) embed $(if $(FROZEN_BACKBONE),--pretrained $(FROZEN_BACKBONE))
	$(HMIC) train --config configs/paper.yaml --protocol frozen $(if $(FROZEN_BACKBONE),--pretrained $(FROZEN_BACKBONE)) --method $(METHODS) --lambdas $(LAMBDAS) --seeds $(SEEDS) --runs-dir runs/paper-frozen --resume $(GRID_FLAGS)
	$(HMIC) tune-thresholds runs/paper-frozen
	$(HMIC) table runs/paper-frozen --out results/table1-frozen

table1-frozen-synth: install
	$(HMIC) synth --out $(SYNTH_DATA) --clips $(SYNTH_CLIPS) --seed 0
	$(HMIC) split --data-dir $(SYNTH_DATA)
	$(HMIC) featurize --data-dir $(SYNTH_DATA)
	$(HMIC) train --config configs/synth.yaml --method gmp --seed 0 --data-dir $(SYNTH_DATA) --runs-dir $(SYNTH_RUNS) --resume $(HIERARCHY_FLAG)
	$(HMIC) embed --run $(SYNTH_BACKBONE_RUN) --data-dir $(SYNTH_DATA)
	$(HMIC) train --config configs/synth.yaml --protocol frozen --pretrained $(SYNTH_BACKBONE_RUN) --arch cnn14-light --method $(GRID_METHODS) --lambdas $(LAMBDAS) --seeds $(SEEDS) --data-dir $(SYNTH_DATA) --runs-dir runs/synth-frozen$(AT_DEPTH) --resume $(GRID_FLAGS) $(HIERARCHY_FLAG)
	$(HMIC) tune-thresholds runs/synth-frozen$(AT_DEPTH)
	$(HMIC) table runs/synth-frozen$(AT_DEPTH) --out results/table1-frozen-synth$(AT_DEPTH)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

soundfonts: $(MUSESCORE)

$(MUSESCORE):
	mkdir -p $(SOUNDFONTS)/deb
	cd $(SOUNDFONTS)/deb && apt-get download musescore-general-soundfont-small
	dpkg -x $(SOUNDFONTS)/deb/musescore-general-soundfont-small_*.deb $(SOUNDFONTS)/deb/root
	cp $(SOUNDFONTS)/deb/root/usr/share/sounds/sf3/MuseScore_General_Lite.sf3 $@
	rm -rf $(SOUNDFONTS)/deb

transfer: install $(MUSESCORE)
	$(BIN)/python benchmarks/transfer.py --test-font $(MUSESCORE) --out data/transfer
