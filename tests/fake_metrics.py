"""A metrics sink that keeps what is recorded, for Ray-free tests (serving_app/metrics.py's `Sink`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Created:
    kind: str
    description: str
    tag_keys: tuple[str, ...]
    buckets: tuple[float, ...]


@dataclass
class FakeSink:
    created: dict[str, Created] = field(default_factory=dict)
    records: list[tuple[str, float, dict[str, str]]] = field(default_factory=list)

    def instrument(self, kind: str, name: str, description: str, tag_keys: tuple[str, ...],
                   buckets: tuple[float, ...] = ()) -> "FakeInstrument":
        # Ray's rules: tag keys a tuple of strings, a name Prometheus accepts, boundaries positive and non-empty.
        assert isinstance(tag_keys, tuple) and all(isinstance(key, str) for key in tag_keys), tag_keys
        assert name.replace("_", "a").isalnum() and not name[0].isdigit(), name
        if kind == "histogram":
            assert buckets and all(b > 0 for b in buckets), (name, buckets)
        assert name not in self.created, f"{name} created twice"
        self.created[name] = Created(kind, description, tag_keys, tuple(buckets))
        return FakeInstrument(self, name)

    def of(self, name: str, **labels: str) -> list[float]:
        """The values recorded for `name` whose tags include `labels`."""
        return [value for n, value, tags in self.records
                if n == name and all(tags.get(k) == v for k, v in labels.items())]

    def total(self, name: str, **labels: str) -> float:
        return sum(self.of(name, **labels))

    def last(self, name: str, **labels: str) -> Any:
        values = self.of(name, **labels)
        return values[-1] if values else None


@dataclass
class FakeInstrument:
    sink: FakeSink
    name: str

    def record(self, value: float, tags: dict[str, str]) -> None:
        created = self.sink.created[self.name]
        assert set(tags) == set(created.tag_keys), f"{self.name}: tags {sorted(tags)} != {sorted(created.tag_keys)}"
        assert all(isinstance(v, str) for v in tags.values()), tags
        if created.kind == "counter":
            assert value > 0, f"{self.name}: Ray refuses a counter increment of {value}"
        self.sink.records.append((self.name, value, dict(tags)))

    def bind(self, tags: dict[str, str]) -> Callable[[float], None]:
        return lambda value: self.record(value, tags)
