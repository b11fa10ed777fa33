"""``python -m examples.idempotent_api [--size small|full]``: the production queue's outcomes, measured."""

import sys

from examples.idempotent_api.run import main

sys.exit(main())
