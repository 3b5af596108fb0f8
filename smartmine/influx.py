"""InfluxDB access through the v1-compatible HTTP API only: line protocol to ``/write``, InfluxQL to ``/query``.

InfluxDB 1.x serves this API natively; 2.x serves it through DBRP mappings with token auth, and 3.x for
compatibility, so this one code path works against all three. Nothing here uses the v2-only API.
Server errors surface as :class:`InfluxError` carrying the server's own message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import urllib3
from isal import igzip

from smartmine.config import Settings

if TYPE_CHECKING:  # pandas costs ~1 s to import; only the query helpers need it, so it loads there
    import pandas as pd
    from influxdb_client.client.write.point import Point

__all__ = ["InfluxClient", "InfluxError", "PartialWriteError", "Point", "gzip_body", "quote_ident", "quote_string"]

# ISA-L (python-isal) writes the same standard gzip as zlib, ~14x faster: 0.9 ms instead of 12.7 ms for a
# 4.6 MB batch of 200,000 readings, 0.06 µs of CPU per reading saved on the writer's core. Its level 2 (the
# library's default) was both faster and smaller than its level 1 on telemetry; InfluxDB inflates either
# in the same time (docs/benchmarks.md, *ingest*).
GZIP_LEVEL = 2


def gzip_body(data: bytes) -> bytes:
    """``data`` gzip'd the way every write to InfluxDB (and the ingest spool) is compressed."""
    return igzip.compress(data, compresslevel=GZIP_LEVEL)


def __getattr__(name: str) -> Any:
    # influxdb-client's Point (0.2 s to import) loads when first used, not with every ``smartmine`` command.
    if name == "Point":
        from influxdb_client.client.write.point import Point

        return Point
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# "partial write: ... dropped=3" / "unable to parse 'line': reason" — the 1.x shapes of a rejected line.
_UNABLE_TO_PARSE = re.compile(r"unable to parse '((?:[^'\\]|\\.)*)': ([^\n]*?)(?=(?:\s+unable to parse)|$)")


class InfluxError(RuntimeError):
    """InfluxDB refused a request or could not be reached. ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
        """True for timeouts, connection errors, 429 and 5xx: the same request may succeed later."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class PartialWriteError(InfluxError):
    """A 4xx on a write: some lines were rejected. ``rejected`` maps each bad line to the server's reason."""

    def __init__(self, message: str, status: int, body: str, rejected: dict[str, str]) -> None:
        super().__init__(message, status, body)
        self.rejected = rejected


@dataclass(frozen=True, slots=True)
class Auth:
    token: str | None = None
    username: str | None = None
    password: str | None = None


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes, escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal in single quotes, escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxClient:
    """A small client for one database. Thread-safe (urllib3's pool); reuse one per process."""

    def __init__(self, url: str, database: str, *, auth: Auth | None = None, retention_policy: str | None = None,
                 timeout_s: float = 10.0, gzip_writes: bool = True, pool_size: int = 4) -> None:
        auth = auth or Auth()
        parts = urlsplit(url)
        if parts.username is not None:
            # http://user:{password}@host is basic auth (1.x users; 2.x accepts a token as the password). The
            # credentials are sent as a header and kept out of self.url, which errors and logs show.
            if not (auth.token or auth.username):  # SMARTMINE_INFLUX_TOKEN/_USER win, as for MQTT
                auth = Auth(username=unquote(parts.username), password=unquote(parts.password or ""))
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.url = url.rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self.gzip_writes = gzip_writes
        self._auth = auth
        self._timeout = urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s)
        self._http = urllib3.PoolManager(num_pools=2, maxsize=pool_size, retries=False)
        self._headers: dict[str, str] = {}
        if self._auth.token:
            self._headers["Authorization"] = f"Token {self._auth.token}"
        elif self._auth.username:
            self._headers.update(urllib3.make_headers(basic_auth=f"{self._auth.username}:{self._auth.password or ''}"))

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> InfluxClient:
        auth = Auth(
            token=settings.influx_token.get_secret_value() if settings.influx_token else None,
            username=settings.influx_user,
            password=settings.influx_password.get_secret_value() if settings.influx_password else None,
        )
        return cls(settings.influx_url, settings.influx_db, auth=auth, retention_policy=settings.influx_rp, **kwargs)

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, fields: Mapping[str, str], body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, preload: bool = True) -> urllib3.BaseHTTPResponse:
        all_headers = dict(self._headers)
        if headers:
            all_headers.update(headers)
        try:
            if body is None:
                return self._http.request(method, self.url + path, fields=dict(fields), headers=all_headers,
                                          timeout=self._timeout, preload_content=preload)
            return self._http.request(method, f"{self.url}{path}?{urlencode(dict(fields))}", body=body,
                                      headers=all_headers, timeout=self._timeout, preload_content=preload)
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxError(f"InfluxDB at {self.url} unreachable: {exc}") from exc

    @staticmethod
    def _error_text(resp: urllib3.BaseHTTPResponse) -> str:
        text = resp.data.decode("utf-8", "replace")
        try:
            data = json.loads(text)
            if isinstance(data, dict) and "error" in data:
                return str(data["error"])
            if isinstance(data, dict) and "message" in data:
                return str(data["message"])
        except ValueError:
            pass
        return text.strip() or resp.reason or f"HTTP {resp.status}"

    # ------------------------------------------------------------------ API
    def ping(self) -> str:
        """The server's version (``X-Influxdb-Version``); raises :class:`InfluxError` when it is down."""
        resp = self._request("GET", "/ping", {})
        if resp.status not in (200, 204):
            raise InfluxError(f"ping: {self._error_text(resp)}", resp.status)
        return resp.headers.get("X-Influxdb-Version", "unknown")

    def write_lines(self, lines: Iterable[str] | bytes, precision: str = "ns",
                    retention_policy: str | None = None) -> None:
        """Write line protocol (one batch). Raises :class:`PartialWriteError` for rejected lines."""
        data = lines if isinstance(lines, bytes) else "\n".join(lines).encode()
        if not data:
            return
        fields = {"db": self.database, "precision": precision}
        rp = retention_policy or self.retention_policy
        if rp:
            fields["rp"] = rp
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip_writes:
            data = gzip_body(data)
            headers["Content-Encoding"] = "gzip"
        resp = self._request("POST", "/write", fields, body=data, headers=headers)
        if resp.status == 204:
            return
        text = self._error_text(resp)
        if 400 <= resp.status < 500 and resp.status not in (401, 403, 404, 413, 429):
            rejected = {m.group(1).replace("\\'", "'"): m.group(2).strip() for m in _UNABLE_TO_PARSE.finditer(text)}
            raise PartialWriteError(f"write to {self.database!r} rejected: {text}", resp.status, text, rejected)
        raise InfluxError(f"write to {self.database!r} failed ({resp.status}): {text}", resp.status, text)

    def write_points(self, points: Iterable[Point], retention_policy: str | None = None) -> None:
        self.write_lines([p.to_line_protocol() for p in points], retention_policy=retention_policy)

    def query(self, q: str, *, method: str = "GET", epoch: str | None = "ns",
              database: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; returns the ``results`` list. A statement error raises :class:`InfluxError`."""
        fields = {"q": q, "db": database or self.database}
        if epoch:
            fields["epoch"] = epoch
        post = method == "POST"
        resp = self._request("POST" if post else "GET", "/query", fields, body=b"" if post else None,
                             headers={"Content-Type": "application/x-www-form-urlencoded"} if post else None)
        if resp.status != 200:
            raise InfluxError(f"query failed ({resp.status}): {self._error_text(resp)}", resp.status)
        results: list[dict[str, Any]] = json.loads(resp.data)["results"]
        for r in results:
            if "error" in r:
                raise InfluxError(f"query {q!r}: {r['error']}", 400, r["error"])
        return results

    def query_chunks(self, q: str, chunk_size: int = 10000, epoch: str = "ns") -> Iterator[dict[str, Any]]:
        """Stream a large result: yields each chunk's series as the server sends them."""
        fields = {"q": q, "db": self.database, "epoch": epoch, "chunked": "true", "chunk_size": str(chunk_size)}
        resp = self._request("GET", "/query", fields, preload=False)
        try:
            if resp.status != 200:
                resp.read()
                raise InfluxError(f"query failed ({resp.status}): {self._error_text(resp)}", resp.status)
            decoder = json.JSONDecoder()
            buf = ""
            for block in resp.stream(1 << 16):
                buf += block.decode()
                while True:
                    buf = buf.lstrip()
                    if not buf:
                        break
                    try:
                        obj, end = decoder.raw_decode(buf)
                    except ValueError:
                        break
                    buf = buf[end:]
                    for r in obj.get("results", []):
                        if "error" in r:
                            raise InfluxError(f"query {q!r}: {r['error']}", 400, r["error"])
                        yield from r.get("series", [])
        finally:
            resp.release_conn()

    def query_df(self, q: str) -> pd.DataFrame:
        """One InfluxQL statement as a DataFrame: a UTC ``time`` column, tag columns, then value columns."""
        import pandas as pd

        frames = []
        for result in self.query(q):
            for series in result.get("series", []):
                frames.append(series_frame(series))
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def execute(self, statement: str) -> None:
        """A statement that changes the server (CREATE, DROP, ALTER...), sent by POST as the API requires."""
        self.query(statement, method="POST", epoch=None)

    def create_database(self) -> None:
        """Create the database if the server allows it (1.x). On 2.x/3.x map a bucket with DBRP instead."""
        self.execute(f"CREATE DATABASE {quote_ident(self.database)}")

    def drop_database(self) -> None:
        self.execute(f"DROP DATABASE {quote_ident(self.database)}")

    def close(self) -> None:
        self._http.clear()


def series_frame(series: Mapping[str, Any]) -> pd.DataFrame:
    """One InfluxQL series (name, tags, columns, values) as a DataFrame with tags as columns."""
    import pandas as pd

    frame = pd.DataFrame(series.get("values", []), columns=series["columns"])
    if "time" in frame.columns and len(frame):
        if pd.api.types.is_integer_dtype(frame["time"]):
            frame["time"] = pd.to_datetime(frame["time"], unit="ns", utc=True)
        else:
            frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    for key, value in (series.get("tags") or {}).items():
        frame[key] = value
    frame.attrs["measurement"] = series.get("name")
    return frame
