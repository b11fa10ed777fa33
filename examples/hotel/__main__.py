"""``python -m examples.hotel [--size small|full]``: run the hotel platform and print claim | measured."""

import sys

from examples.hotel.hotel import main

sys.exit(main())
