# Developer shortcuts. CI runs .ci/run (the README's test command).
.PHONY: check test lint bench accuracy

check: lint test

lint:
	ruff check swiftplan tests benchmarks scripts
	lint-imports

test:
	python -m pytest -q

bench:
	python benchmarks/estimate_speed.py
	python benchmarks/search_quality.py
	python benchmarks/size_speed.py
	python benchmarks/published_accuracy.py

accuracy:
	python benchmarks/memory_accuracy.py
