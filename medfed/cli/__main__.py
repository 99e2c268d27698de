"""`python -m medfed.cli`: the same as the `medfed` command."""

from medfed.cli.main import main

main()
