"""
Twisted endpoint plugins: C{beam:} server and client endpoint strings
(see L{beam.endpoints}).
"""

from beam.endpoints import BeamClientParser, BeamServerParser

beamServer = BeamServerParser()
beamClient = BeamClientParser()
