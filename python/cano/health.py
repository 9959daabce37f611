"""The health of a resource: healthy, degraded or unhealthy, ordered by severity."""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["HealthKind", "HealthStatus"]

HealthKind = Literal["healthy", "degraded", "unhealthy"]

_SEVERITY: Final[dict[str, int]] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


class HealthStatus:
    """The health of one resource: healthy, degraded (usable, with a reason) or unhealthy.

    Statuses are immutable and hashable, and order by severity
    (healthy < degraded < unhealthy), so ``max(statuses)`` is the worst one::

        HealthStatus.healthy().is_healthy                 # True
        HealthStatus.degraded("replica lag").reason       # 'replica lag'
        HealthStatus.degraded("slow") < HealthStatus.unhealthy("down")   # True
    """

    __slots__ = ("_kind", "_reason")

    _kind: HealthKind
    _reason: str | None

    def __init__(self, kind: HealthKind, reason: str | None = None) -> None:
        """Prefer :meth:`healthy`, :meth:`degraded` and :meth:`unhealthy`.

        Raises ``ValueError`` for an unknown kind, a reason on a healthy status or a
        missing reason on any other.
        """
        if kind not in _SEVERITY:
            raise ValueError(f"unknown health kind {kind!r}: use healthy, degraded or unhealthy")
        if (kind == "healthy") != (reason is None):
            raise ValueError(
                f"a {kind} HealthStatus {'takes no' if kind == 'healthy' else 'needs a'} reason"
            )
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_reason", reason)

    @classmethod
    def healthy(cls) -> HealthStatus:
        """The resource works normally."""
        return cls("healthy")

    @classmethod
    def degraded(cls, reason: str) -> HealthStatus:
        """The resource works, but not as it should (``reason`` says why)."""
        return cls("degraded", reason)

    @classmethod
    def unhealthy(cls, reason: str) -> HealthStatus:
        """The resource cannot be used (``reason`` says why)."""
        return cls("unhealthy", reason)

    @property
    def kind(self) -> HealthKind:
        """``"healthy"``, ``"degraded"`` or ``"unhealthy"``."""
        return self._kind

    @property
    def is_healthy(self) -> bool:
        """True only for a healthy status (a degraded one is not healthy)."""
        return self._kind == "healthy"

    @property
    def reason(self) -> str | None:
        """Why the resource is degraded or unhealthy; ``None`` when healthy."""
        return self._reason

    @property
    def severity(self) -> int:
        """0 when healthy, 1 when degraded, 2 when unhealthy."""
        return _SEVERITY[self._kind]

    def _order(self) -> tuple[int, str]:
        # Ties in severity are broken by reason so that the order is total.
        return (self.severity, self._reason or "")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"HealthStatus is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"HealthStatus is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[HealthStatus], tuple[HealthKind, str | None]]:
        return (HealthStatus, (self._kind, self._reason))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._kind == other._kind and self._reason == other._reason

    def __hash__(self) -> int:
        return hash((self._kind, self._reason))

    def __lt__(self, other: HealthStatus) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._order() < other._order()

    def __le__(self, other: HealthStatus) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._order() <= other._order()

    def __gt__(self, other: HealthStatus) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._order() > other._order()

    def __ge__(self, other: HealthStatus) -> bool:
        if not isinstance(other, HealthStatus):
            return NotImplemented
        return self._order() >= other._order()

    def __repr__(self) -> str:
        if self._reason is None:
            return f"HealthStatus.{self._kind}()"
        return f"HealthStatus.{self._kind}({self._reason!r})"
