"""Converter tests: share the zoo export fixture (tests/ is on sys.path through pyproject's pythonpath)."""
from zoo import zoo_exports  # noqa: F401  (session fixture: zoo models exported once)
