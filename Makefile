# Two commands do all of the set-up on a fresh machine:
#   make run    create .venv, install vSL, serve the example policies on 127.0.0.1:2525
#   make test   create .venv, install vSL and its test extras, run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Serves examples/policy on 127.0.0.1:2525 (see examples/vsl.toml); Ctrl-C stops it.
run: $(STAMP)
	$(BIN)/vsl lint examples
	$(BIN)/vsl test examples/*/*.transcript
	$(BIN)/vsl serve --config examples/vsl.toml

# Debian tools some tests drive; missing ones are named and their tests skipped
# (with CI=true a missing tool fails those tests: .ci/run installs them).
TOOLS := swaks smtp-source redis-server rabbitmq-server

test: $(STAMP)
	@for tool in $(TOOLS); do command -v $$tool >/dev/null || \
	    echo "missing: $$tool (its tests are skipped; apt-get install swaks postfix" \
	    "redis-server rabbitmq-server)"; done
	@perl -MNet::SSLeay -e1 2>/dev/null || echo "missing: Net::SSLeay (swaks --tls tests" \
	    "are skipped; apt-get install libnet-ssleay-perl)"
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/interp.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/dns_cache.py
	$(BIN)/python bench/smtp_session.py
	$(BIN)/python bench/native_await.py
	$(BIN)/python bench/anti_abuse.py
	$(BIN)/python bench/admission.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/observability.py
	$(BIN)/python bench/bounce.py
	$(BIN)/python bench/connections.py
	$(BIN)/python bench/tls.py
	$(BIN)/python bench/soak.py

lint: $(STAMP)
	$(BIN)/vsl lint examples

# docs/natives.md is generated from the namespaces (tests/test_docs.py checks it is current).
docs: $(STAMP)
	$(BIN)/python -m vsl.stdlib.support.reference > docs/natives.md.new
	mv docs/natives.md.new docs/natives.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis queue mail
