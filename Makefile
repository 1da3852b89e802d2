# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv and
# install mmeff (editable, with dev tools) on first use.
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test app bench lint clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e ".[dev,eval,docs,app,rewards]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmeff demo

app: $(STAMP)
	$(VENV)/bin/mmeff app

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/mmeff bench tokens
	$(VENV)/bin/mmeff bench halluc
	$(VENV)/bin/mmeff bench reno
	$(VENV)/bin/mmeff bench ar

lint: $(STAMP)
	$(VENV)/bin/ruff check mmeff plugins tests demos

clean:
	rm -rf $(VENV) bench_results
