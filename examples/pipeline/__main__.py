"""``python -m examples.pipeline [--size small|full]``: the meeting pipeline's claims, measured."""

import sys

from examples.pipeline.run import main

sys.exit(main())
