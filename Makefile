# facesets: `make demo` runs the main job on sample photos, `make test` runs ruff, mypy and pytest.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SHARED ?= ../shared

.PHONY: test chromium demo demo-immich lint stage embed cluster export load finalize bench-embed bench-distributed bench-index bench-db bench-cluster bench-stage bench-serve screenshots eval-clusters torture clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,dev]'
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint chromium
	$(BIN)/pytest

# the browser tests drive Debian's Chromium (Playwright cannot download its own browser here)
chromium:
	@test -x /usr/bin/chromium || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; }

demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py --shared $(SHARED)

demo-immich: $(VENV)/.installed
	$(BIN)/python scripts/demo.py --immich --shared $(SHARED)

# The per-user workflow (USER=peter): stage from Immich, then the finalize steps; each can be run alone.
# USER must be given on the command line: the login name in the environment is not an Immich user label.
require_user = $(if $(filter command line,$(origin USER)),,$(error USER= is required: make $@ USER=peter (the user label of the Immich library)))

stage: $(VENV)/.installed
	$(require_user)
	$(BIN)/python work/immich_stage.py --user $(USER)

embed cluster export load: $(VENV)/.installed
	$(require_user)
	$(BIN)/python -m facesets finalize --user $(USER) --steps $@

finalize: $(VENV)/.installed
	$(require_user)
	bash work/finalize_immich.sh $(USER)

bench-embed: $(VENV)/.installed
	$(BIN)/python scripts/bench_embed.py --shared $(SHARED)

bench-distributed: $(VENV)/.installed
	$(BIN)/python scripts/bench_distributed.py --shared $(SHARED)

bench-index: $(VENV)/.installed
	$(BIN)/python scripts/bench_index.py

bench-db: $(VENV)/.installed
	$(BIN)/python scripts/bench_db.py

bench-cluster: $(VENV)/.installed
	$(BIN)/python scripts/bench_cluster.py

bench-stage: $(VENV)/.installed
	$(BIN)/python scripts/bench_stage.py --shared $(SHARED)

bench-serve: $(VENV)/.installed
	$(BIN)/python scripts/bench_serve.py --shared $(SHARED)

# after `make demo`: the README's pictures of the review page, from the demo's store
screenshots: $(VENV)/.installed chromium
	$(BIN)/python scripts/screenshots.py --data demo/pg --out docs/screenshots

eval-clusters: $(VENV)/.installed
	$(BIN)/python scripts/eval_clusters.py --shared $(SHARED)

torture: $(VENV)/.installed
	$(BIN)/python scripts/torture.py --shared $(SHARED)

clean:
	rm -rf demo demo-immich bench .pytest_cache .mypy_cache .ruff_cache
