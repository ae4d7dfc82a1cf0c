# The one registration: every Beam node with this package installed runs
# the "hello" service (see hello_beam/__init__.py and docs/architecture.md).
from beam.daemon.plugins import BeamService

hello = BeamService("hello", "hello_beam.makeService", "greets peers on /hello/1.0.0")
