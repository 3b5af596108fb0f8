"""Topics split into their levels, whatever the prefix: a replay reads recordings made under any prefix."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from smartmine.wire import WireError, parse_topic


@dataclass(frozen=True, slots=True)
class TopicParts:
    """A topic split into its levels; the prefix is whatever precedes the last four."""

    prefix: str
    site: str
    area: str
    equipment: str
    channel: str

    def with_prefix(self, prefix: str) -> str:
        return f"{prefix}/{self.site}/{self.area}/{self.equipment}/{self.channel}"


@lru_cache(maxsize=65536)
def split_topic(topic: str) -> TopicParts | None:
    """The parts of ``<prefix>/<site>/<area>/<equipment>/<channel>``, or None if it does not follow the scheme."""
    parts = topic.rsplit("/", 4)
    if len(parts) != 5:
        return None
    try:
        t = parse_topic(topic, parts[0])
    except WireError:
        return None
    return TopicParts(t.prefix, t.site, t.area, t.equipment, t.channel)
