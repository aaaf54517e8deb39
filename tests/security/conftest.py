"""The security tests' helpers (bypass_corpus, rawwire) live next to them;
their stacks come from tests/conftest.py (one per module). They need
requirements/security.txt (h2, schemathesis) on top of requirements/test.txt."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
