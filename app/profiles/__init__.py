"""Model profiles (profile.py) and the model-specific steps they choose by name (steps.py)."""

from app.profiles import thinkgate_arith as thinkgate_arith  # registers the bundled model's steps
