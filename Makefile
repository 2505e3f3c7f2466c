# make demo : set up, then train the three example nets on bundled data and print their table
# make test : set up, then run the test suite
# make bench: set up, then time our layers against Caffe's built-in loss layers
# make experiments: set up, then measure which loss to use (about 26 minutes on 2 cores; docs/choosing-a-loss.md)
# make mutants: set up, then check that the tests catch every curated mutant (10-30 minutes; docs/mutants.md)
VENV := .venv

.PHONY: setup test demo bench mutants experiments clean
setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest

demo: setup
	$(VENV)/bin/python examples/demo.py

bench: setup
	$(VENV)/bin/python benchmarks/bench_losses.py

mutants: setup
	$(VENV)/bin/python scripts/mutants.py

experiments: setup
	$(VENV)/bin/python experiments/run.py

clean:
	rm -rf $(VENV) runs build *.egg-info
