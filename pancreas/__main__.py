from __future__ import annotations

import sys

from pancreas.cli import main

sys.exit(main())
