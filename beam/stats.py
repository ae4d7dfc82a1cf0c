"""
Counters and latency histograms that the lower layers keep for the
daemon's metrics (L{beam.daemon.metrics}) and status.

A leaf module (it imports nothing from Beam): the dialer, the DHT and
anything else below the daemon keep their figures in these small objects,
and only the daemon turns them into Prometheus text.  That keeps
C{prometheus_client} out of the node's hot paths and out of CLI start-up:
recording a value here is a few integer additions, with no locks, threads
or registries.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Iterator, Optional

__all__ = ["Counts", "DEFAULT_LATENCY_BUCKETS", "Histogram"]

#: Upper bounds, in seconds, for network latencies: from a LAN round trip
#: (a few milliseconds) to a DHT lookup that waits out several timeouts.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class Histogram:
    """
    A fixed-bucket histogram, shaped like a Prometheus one: each
    observation falls into the first bucket whose upper bound is at least
    its value (bounds are inclusive, as Prometheus' C{le}), or into the
    implicit C{+Inf} bucket past the last bound.

    Fixed buckets keep memory constant however many values are observed;
    the price is that L{quantile} is an estimate, exact only to the width
    of the bucket the quantile falls in.

    @ivar bounds: the finite upper bounds, ascending.
    @ivar counts: observations per bucket (not cumulative), one more entry
        than C{bounds} (the last is the C{+Inf} bucket).
    @ivar sum: the sum of all observed values.
    @ivar count: how many values were observed.
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        self.bounds: tuple[float, ...] = tuple(float(b) for b in bounds)
        if not self.bounds:
            raise ValueError("a histogram needs at least one bucket bound")
        if any(b != b or b in (float("inf"), float("-inf")) for b in self.bounds):
            raise ValueError("bucket bounds must be finite numbers (+Inf is implicit)")
        if any(a >= b for a, b in zip(self.bounds, self.bounds[1:])):
            raise ValueError("bucket bounds must be strictly ascending")
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """
        Record one value (for latencies: seconds).  NaN is ignored, since
        it would poison the sum and belongs in no bucket.
        """
        if value != value:
            return
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """
        C{(upper bound, observations at or below it)} for every bucket,
        ending with C{(inf, count)}: Prometheus' C{_bucket} series.
        """
        total = 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            yield bound, total

    def quantile(self, q: float) -> Optional[float]:
        """
        An estimate of the C{q}-quantile (C{0 <= q <= 1}), interpolated
        linearly inside the bucket it falls in, as Prometheus'
        C{histogram_quantile} does (the first bucket is taken to start at
        0, or at its bound when that is negative).  A quantile in the
        C{+Inf} bucket is reported as the highest finite bound: all we
        know is that it is larger.

        @return: L{None} when nothing was observed.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], not {q!r}")
        if self.count == 0:
            return None
        rank = q * self.count
        below = 0
        lower = min(0.0, self.bounds[0])
        for i, n in enumerate(self.counts):
            if i == len(self.bounds):
                return self.bounds[-1]
            upper = self.bounds[i]
            if n and below + n >= rank:
                return lower + (upper - lower) * ((rank - below) / n)
            below += n
            lower = upper
        return self.bounds[-1]  # pragma: no cover (the loop always returns)

    def __repr__(self) -> str:
        return f"<Histogram count={self.count} sum={self.sum:.6g}>"


class Counts:
    """
    Counters under a fixed set of keys (such as the causes of dial
    failures): a key outside the set is counted under C{fallback}, so the
    set of series a metric exports stays bounded whatever happens.

    @ivar keys: the keys, in the order given.
    """

    __slots__ = ("keys", "fallback", "_values")

    def __init__(self, keys: Iterable[str], fallback: Optional[str] = None) -> None:
        self.keys: tuple[str, ...] = tuple(keys)
        if fallback is not None and fallback not in self.keys:
            raise ValueError(f"the fallback key {fallback!r} is not one of the keys")
        self.fallback = fallback
        self._values = dict.fromkeys(self.keys, 0)

    def increment(self, key: str, n: int = 1) -> None:
        """
        Add C{n} to C{key}'s counter (to the fallback's for an unknown key).

        @raise KeyError: an unknown key and no fallback.
        """
        if key not in self._values:
            if self.fallback is None:
                raise KeyError(key)
            key = self.fallback
        self._values[key] += n

    def __getitem__(self, key: str) -> int:
        return self._values[key]

    def items(self) -> list[tuple[str, int]]:
        """
        C{(key, count)} for every key, zeros included (a Prometheus counter
        should exist from the start, not appear at its first increment).
        """
        return list(self._values.items())

    def total(self) -> int:
        """
        The sum over every key.
        """
        return sum(self._values.values())

    def asDict(self) -> dict[str, int]:
        """
        The counters, for status output.
        """
        return dict(self._values)

    def __repr__(self) -> str:
        return f"<Counts {self._values}>"
