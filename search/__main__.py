from __future__ import annotations

from search.cli import main

raise SystemExit(main())
