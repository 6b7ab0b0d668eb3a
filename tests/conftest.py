import os
import sys

# Tests run on the CPU; the 8-device pod simulation is opt-in per subprocess (see test_sharding).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))
