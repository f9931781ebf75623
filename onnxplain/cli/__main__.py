"""`python -m onnxplain.cli ...` runs the `onnxplain` command (benchmarks start the server this way)."""
import sys

from . import main

sys.exit(main())
