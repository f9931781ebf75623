"""Converter tests: make tests/ importable (zoo, real_models) and share the zoo export fixture."""
import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent.parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from zoo import zoo_exports  # noqa: E402,F401  (session fixture: zoo models exported once)
