# Deployment targets, included by the top-level Makefile.
VENV := .tools/venv
KUBE_VALIDATE := $(VENV)/bin/kubernetes-validate
DEPLOY_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
SERVICES := contacts lifecycle feedback metrics
IMAGE_REGISTRY ?= registry.example.com/clm
IMAGE_TAG ?= $(shell git describe --tags --always 2>/dev/null || echo dev)

.PHONY: image deploy-check

image: ## print the docker build commands for every service image (no Docker engine here)
	@for s in $(SERVICES); do \
	  echo "docker build -f deploy/Dockerfile --build-arg SERVICE=$$s -t $(IMAGE_REGISTRY)/clm-$$s:$(IMAGE_TAG) ."; \
	done

$(KUBE_VALIDATE):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 pyyaml

deploy-check: $(KUBE_VALIDATE) ## render every overlay, validate offline, prove manifests match the binaries
	$(CARGO) build --workspace --bins
	$(VENV)/bin/python deploy/check.py $(DEPLOY_TARGET_DIR)
