"""``python -m guestmem``: the CLI, for machines where the script is not on PATH."""

from guestmem.cli import main

raise SystemExit(main())
