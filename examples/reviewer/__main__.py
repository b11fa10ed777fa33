"""``python -m examples.reviewer [--size small|full]``: local mode, worker mode and the redacted final failure."""

import sys

from examples.reviewer.run import main

sys.exit(main())
