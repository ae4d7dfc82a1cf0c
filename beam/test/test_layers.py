"""
The package's layers, checked from the source: an import that runs upward,
or a cycle between packages, is a design bug and fails here.

The layers, bottom-up (docs/architecture.md draws them)::

    errors, proto                      (leaves: anyone may import them)
    encoding    varint, base58, framing
    controlapi  status values as JSON, the control API's resource base (beside encoding)
    identity    keys, peer IDs, multiaddrs
    storage     atomic files, the home directory
    p2p         transports, security, muxer, multistream, host, protocols
    dht | tunnel                       (services; neither imports the other)
    names       (above the DHT it stores records in)
    daemon      the MultiService a user runs, config, logs, control socket
    console     what the terminal shows (styles, live lines, completion)
    cli, tap, endpoints, testing, the public beam/__init__

The check reads every import statement with L{ast}, including imports
inside functions and under C{TYPE_CHECKING}: a lazy import that runs upward
is still an upward dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, int] = {
    "beam.errors": 0,
    "beam.proto": 0,
    "beam.statemachine": 0,
    "beam._lazy": 0,
    "beam.stats": 0,
    "beam.encoding": 1,
    "beam.controlapi": 1,
    "beam.identity": 2,
    "beam.storage": 3,
    "beam.p2p": 4,
    "beam.dht": 5,
    "beam.tunnel": 5,
    "beam.names": 6,
    "beam.daemon": 7,
    "beam.console": 8,
    "beam.cli": 9,
    "beam.tap": 9,
    "beam.endpoints": 9,
    "beam.plugins": 9,
    "beam.testing": 10,
}


def moduleName(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def isPackage(path: Path) -> bool:
    return path.name == "__init__.py"


def layerOf(module: str) -> tuple[str, int] | None:
    """
    The layer prefix C{module} belongs to and its rank; L{None} for the
    root package C{beam} itself.
    """
    best: tuple[str, int] | None = None
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return best


def importsOf(path: Path) -> list[tuple[int, str]]:
    """
    Every C{beam...} module C{path} imports, with its line number.
    """
    tree = ast.parse(path.read_text(), str(path))
    here = moduleName(path)
    package = here if isPackage(path) else here.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "beam")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "beam":
                continue
            # from beam.p2p import host: "host" may be a submodule.
            for alias in node.names:
                out.append((node.lineno, f"{mod}.{alias.name}" if mod == "beam" else mod))
    return out


def sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "test" not in p.relative_to(ROOT).parts[:1])


def packageOf(module: str, allPackages: set[str]) -> str:
    """
    The deepest package that contains C{module} (a package is its own).
    """
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in allPackages:
            return candidate
    return "beam"


class LayerTests(SynchronousTestCase):
    """
    The import graph of C{beam/} (tests excluded) respects the layers.
    """

    def test_everyModuleHasALayer(self) -> None:
        """
        Every module under C{beam/} belongs to a declared layer, so a new
        top-level module must be placed on purpose.
        """
        missing = [moduleName(p) for p in sources() if moduleName(p) != "beam" and layerOf(moduleName(p)) is None]
        self.assertEqual(missing, [])

    def test_noUpwardImports(self) -> None:
        """
        No module imports from a layer above its own, nor from another
        package of the same rank (the DHT and tunnels know nothing of each
        other).  Only the root C{beam/__init__} (the public API) and
        C{from beam import __version__} are exempt.
        """
        problems = []
        for path in sources():
            here = moduleName(path)
            mine = layerOf(here)
            if mine is None:
                continue
            for line, target in importsOf(path):
                if target in ("beam.__version__", "beam"):
                    continue
                theirs = layerOf(target)
                if theirs is None:
                    problems.append(f"{here}:{line} imports {target}, which has no layer")
                elif theirs[1] > mine[1] or (theirs[1] == mine[1] and theirs[0] != mine[0]):
                    problems.append(f"{here}:{line} ({mine[0]}) imports {target} ({theirs[0]})")
        self.assertEqual(problems, [], "\n".join(problems))

    def test_noCyclesBetweenPackages(self) -> None:
        """
        The graph of imports between packages (each directory with an
        C{__init__.py}, at every depth, e.g. C{beam.p2p.host} and
        C{beam.p2p.muxer}) has no cycle.
        """
        allPackages = {moduleName(p) for p in sources() if isPackage(p)}
        graph: dict[str, set[str]] = defaultdict(set)
        for path in sources():
            here = packageOf(moduleName(path), allPackages)
            for _, target in importsOf(path):
                there = packageOf(target, allPackages)
                if there != here and not here.startswith(there + ".") and here != "beam":
                    graph[here].add(there)
        # A parent package re-exporting its children is not a cycle.
        for pkg in list(graph):
            graph[pkg] = {t for t in graph[pkg] if not t.startswith(pkg + ".")}
        cycle = findCycle(graph)
        self.assertIsNone(cycle, f"import cycle between packages: {cycle}")

    def test_detectsViolations(self) -> None:
        """
        The checker itself notices a cycle (so the tests above can fail).
        """
        self.assertEqual(findCycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(findCycle({"a": {"b"}, "b": {"c"}}))
        self.assertEqual(layerOf("beam.p2p.host.node"), ("beam.p2p", 4))
        self.assertEqual(layerOf("beam.dht.kad"), ("beam.dht", 5))


def findCycle(graph: dict[str, set[str]]) -> list[str] | None:
    """
    One cycle in C{graph} as a path that returns to its start, or L{None}.
    """
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


class PublicAPITests(SynchronousTestCase):
    """
    The root package's public names.
    """

    def test_publicNames(self) -> None:
        """
        C{from beam import Node, Identity, PeerID, Multiaddr, BeamError,
        IHost} works, each name is the real class, and unknown names raise
        AttributeError.
        """
        import beam
        from beam.errors import BeamError
        from beam.identity.keys import Identity, PeerID
        from beam.identity.multiaddr import Multiaddr
        from beam.p2p.host.node import Node
        from beam.p2p.interfaces import IHost

        self.assertIs(beam.Node, Node)
        self.assertIs(beam.Identity, Identity)
        self.assertIs(beam.PeerID, PeerID)
        self.assertIs(beam.Multiaddr, Multiaddr)
        self.assertIs(beam.BeamError, BeamError)
        self.assertIs(beam.IHost, IHost)
        self.assertIn("Node", dir(beam))
        self.assertRaises(AttributeError, getattr, beam, "nope")

    def test_importIsCheap(self) -> None:
        """
        C{import beam} alone imports no Twisted module (public names load
        on first use).
        """
        import subprocess
        import sys

        out = subprocess.run(
            [sys.executable, "-c", "import sys, beam; print(sorted(m for m in sys.modules if m.startswith('twisted')))"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        self.assertEqual(out.stdout.strip(), "[]")
