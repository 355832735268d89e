# The two commands of the quick start: `make run` and `make test`. CI runs `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed

.PHONY: run test lint types unit bench profile soak sysdeps clean lock lock-upgrade sbom mesh

# Everything installs from the hashed locks in requirements/ (see docs/operations.md): the
# developer's venv, CI and the image run the same versions. pip's own version does not matter.
# Two stamps: `make run` needs the runtime only ($(RUNTIME): runtime.lock and iap); the test
# tools (pytest, ruff, mypy, playwright...) come with test.lock ($(STAMP)) for everything else.
$(RUNTIME): pyproject.toml requirements/runtime.lock requirements/build.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps \
		-r requirements/build.lock -r requirements/runtime.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) requirements/test.lock
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/test.lock
	touch $(STAMP)

# `make lock` re-resolves pyproject.toml for the image (CPython 3.11, glibc Linux, wheels
# only), keeping every version the locks already allow; `make lock-upgrade` moves them all
# to the newest. The test lock takes the runtime lock as a constraint, so both agree.
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_36 --only-binary :all: \
	--custom-compile-command 'make lock' $(UPGRADE)
BUILD_REQUIRES = $(BIN)/python -c 'import tomllib; \
	print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock: $(STAMP)
	$(UV_COMPILE) pyproject.toml -o requirements/runtime.lock
	$(UV_COMPILE) pyproject.toml --extra test -c requirements/runtime.lock -o requirements/test.lock
	$(BUILD_REQUIRES) | $(UV_COMPILE) - -o requirements/build.lock
	$(MAKE) sbom

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

# The CycloneDX SBOM of the runtime lock, read from a throwaway venv that holds exactly that
# set (licenses and the dependency graph come from the installed metadata). The image
# carries it as /opt/iap/sbom.cdx.json.
SBOM_ENV := $(VENV)/sbom-env
sbom: $(STAMP)
	rm -rf $(SBOM_ENV) && $(PYTHON) -m venv --without-pip $(SBOM_ENV)
	$(BIN)/python -m pip --python $(SBOM_ENV)/bin/python install --quiet --require-hashes \
		--no-deps -r requirements/runtime.lock
	$(BIN)/cyclonedx-py environment --pyproject pyproject.toml --mc-type application \
		--output-reproducible --of JSON --sv 1.6 -o requirements/runtime.cdx.json \
		$(SBOM_ENV)/bin/python
	rm -rf $(SBOM_ENV)

run: $(RUNTIME)
	$(BIN)/iap dev

# deploy/k8s/istio/ (a kustomize Component) from the ConfigMap's iap.yaml by `iap mesh render`;
# tests/deploy/test_mesh_component.py fails when the checked-in files drift from it.
mesh: $(STAMP)
	$(BIN)/python scripts/mesh_component.py

sysdeps:
	bash scripts/sysdeps.sh

lint: $(STAMP)
	$(BIN)/ruff check iap tests bench examples
	$(BIN)/ruff format --check iap tests bench examples
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term

test: $(STAMP) sysdeps lint types unit

bench: $(STAMP)
	bash scripts/sysdeps.sh wrk nginx haproxy caddy redis-server
	$(BIN)/python bench/run.py

# py-spy samples iap under the bench's load; the top functions go into docs/PERFORMANCE.md.
profile: $(STAMP)
	bash scripts/sysdeps.sh wrk
	$(BIN)/python bench/sampling.py

# Not part of `make test`: SOAK_MINUTES (default 10) of mixed traffic, written to docs/PERFORMANCE.md.
soak: $(STAMP)
	bash scripts/sysdeps.sh
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage
