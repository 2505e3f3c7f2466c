# make demo : set up, then train the three example nets on bundled data and print their table
# make test : set up, then run the test suite
# make bench: set up, then time our layers against Caffe's built-in loss layers
VENV := .venv

.PHONY: setup test demo bench clean
setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest

demo: setup
	$(VENV)/bin/python examples/demo.py

bench: setup
	$(VENV)/bin/python benchmarks/bench_losses.py

clean:
	rm -rf $(VENV) runs build *.egg-info
