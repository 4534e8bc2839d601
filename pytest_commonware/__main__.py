"""``python -m pytest_commonware trace show|diff|export ...`` (see ``pytest_commonware.cli``)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
