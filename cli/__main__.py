"""``python -m tierbox.cli``: the same as the ``tierbox`` command."""

from tierbox.cli.main import main

main()
