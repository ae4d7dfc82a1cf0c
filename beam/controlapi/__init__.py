"""
What every service's part of the control API is built from.

A service reports its status as a frozen L{attrs} value and, if it takes
commands, offers a L{JSONResource} that the daemon mounts under
C{/v1/<name>} of the control socket (see L{beam.daemon.plugins}).  Status
values become JSON (or text) only at the edge: L{asJSON} renders any of
them, L{fromJSON} reads them back where the JSON arrives (the command line).

This package sits just above the leaves (it needs only L{beam.errors}), so
every service, and the host, can use it.
"""

from beam.controlapi.resource import (
    MAX_BODY,
    Alias,
    BadRequest,
    JSONResource,
    TooLarge,
    checkUnknown,
    childKey,
    field,
    portField,
    queryFlag,
    readBody,
)
from beam.controlapi.values import asJSON, fromJSON, jsonField, jsonKey

__all__ = [
    "MAX_BODY",
    "Alias",
    "BadRequest",
    "JSONResource",
    "TooLarge",
    "asJSON",
    "checkUnknown",
    "childKey",
    "field",
    "fromJSON",
    "jsonField",
    "jsonKey",
    "portField",
    "queryFlag",
    "readBody",
]
