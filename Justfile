# Recipes run inside .venv (created on first use), so only Python 3.11 and pip are needed.
py := ".venv/bin/python"

default:
    @just --list

# Create .venv and install the package with its dev tools.
venv:
    test -x {{py}} || python3 -m venv .venv
    {{py}} -m pip install -q -e ".[dev]"

# Run the quick-start demo against the embedded fake Feishu server.
demo: venv
    {{py}} demos/quickstart.py

# Run the whole test suite.
test *args: venv
    {{py}} -m pytest {{args}}

# ruff (lint + format check) and mypy --strict over the package, tests, demos and benchmarks.
lint: venv
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy

# Format the code in place.
fmt: venv
    .venv/bin/ruff format .
    .venv/bin/ruff check --fix .

# Benchmarks (never part of the tests): writes benchmarks/results/ and prints the tables;
# `just bench --quick` is a smoke run into a temporary directory, `--only NAME` one scenario.
bench *args: venv
    {{py}} -m pip install -q -e ".[dev,bench]"
    {{py}} benchmarks/run.py {{args}}
