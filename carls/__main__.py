"""``python -m carls`` is the ``carls`` command."""

from carls.cli import main

main()
