"""`python -m swiftplan` runs the CLI."""

from swiftplan.cli import main

main()
