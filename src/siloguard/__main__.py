"""``python -m siloguard``: the same as the ``siloguard`` command."""

from siloguard.cli import main

main()
