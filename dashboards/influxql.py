"""InfluxQL panel queries for the Grafana foundation SDK, and how Grafana fills their variables.

The SDK ships typed queries for many data sources but not InfluxDB's InfluxQL, so :class:`InfluxQLQuery`
is the one missing piece, shaped like the targets Grafana's InfluxDB data source saves for a raw query
(``query``, ``rawQuery``, ``resultFormat``, ``alias``). :func:`fill` substitutes variables the way
Grafana does before a query reaches InfluxDB, so tests and ``smartmine dashboards check`` run exactly
what a board would.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from smartmine.influx import quote_ident

DATASOURCE_TYPE = "influxdb"
ResultFormat = Literal["time_series", "table"]


class InfluxQLQuery(cogvariants.Dataquery):
    """One raw InfluxQL target of a panel."""

    def __init__(self, ref_id: str, query: str, datasource_uid: str, *, result_format: ResultFormat = "time_series",
                 alias: str | None = None) -> None:
        self.ref_id = ref_id
        self.query = query
        self.datasource = DataSourceRef(type_val=DATASOURCE_TYPE, uid=datasource_uid)
        self.result_format = result_format
        self.alias = alias

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {"refId": self.ref_id, "datasource": self.datasource.to_json(),
                                      "query": self.query, "rawQuery": True, "resultFormat": self.result_format}
        if self.alias:
            payload["alias"] = self.alias
        return payload


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    def __init__(self, query: str, datasource_uid: str, *, ref_id: str = "A", table: bool = False,
                 alias: str | None = None) -> None:
        self._query = InfluxQLQuery(ref_id, query, datasource_uid, result_format="table" if table else "time_series",
                                    alias=alias)

    def build(self) -> InfluxQLQuery:
        return self._query


def tag_filter(*tags: str) -> str:
    """``site =~ /^$site$/ AND ...``: Grafana turns a multi-value or All variable into a regex group."""
    return " AND ".join(f"{quote_ident(tag)} =~ /^${tag}$/" for tag in tags)


def measurements_regex(names: Sequence[str]) -> str:
    """``/^(a|b)$/`` for a FROM clause over several measurements (equipment types)."""
    return "/^(" + "|".join(re.escape(n) for n in sorted(names)) + ")$/"


# ------------------------------------------------------------------ variable filling, as Grafana does it
def _regex_value(values: Sequence[str]) -> str:
    if list(values) == ["$__all"]:
        return ".*"  # Grafana's All: every value, which matches like an unrestricted regex
    escaped = [re.sub(r"([\\/.^$*+?()\[\]{}|])", r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def fill(query: str, variables: Mapping[str, Sequence[str]], *, time_range_s: int = 3600, interval_s: int = 10) -> str:
    """The query Grafana sends for these variable values and time range.

    ``$timeFilter`` becomes ``time >= now() - <range>s``, ``$__interval`` the group-by interval, and a
    template variable inside ``/^$var$/`` its regex-escaped values (``(a|b)`` for several).
    """
    out = query.replace("$timeFilter", f"time >= now() - {time_range_s}s")
    out = out.replace("$__interval", f"{interval_s}s").replace("$interval", f"{interval_s}s")
    for name in sorted(variables, key=len, reverse=True):
        out = out.replace(f"${{{name}}}", _regex_value(variables[name])).replace(
            f"${name}", _regex_value(variables[name]))
    if m := re.search(r"\$\{?[A-Za-z_]\w*", out):
        raise ValueError(f"variable {m.group(0)} is not filled in query {query!r}")
    return out
