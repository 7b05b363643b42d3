"""``python -m agentlanes`` is the ``agentlanes`` command."""

from agentlanes.cli import main

raise SystemExit(main())
