"""A tiny local HTTP server that records requests and checks them against Grafana's documented HTTP API.

This is not Grafana: it answers the few endpoints smartmine uses the way the documentation says Grafana
does, and checks every request's method, path and body against the documented shape. The shapes come
from Grafana's published HTTP API reference (legacy ``/api`` routes, served by Grafana 8 to 12):

- Folder API: ``GET /api/folders/:uid`` (404 when missing), ``POST /api/folders`` with ``{uid, title}``
- Dashboard API: ``POST /api/dashboards/db`` with ``{dashboard, folderUid, overwrite, message}``;
  ``dashboard.uid`` at most 40 characters, ``dashboard.id`` null or absent for an upsert by uid
- Data source API: ``GET /api/datasources/uid/:uid`` (404 when missing)
- Annotations API: ``GET /api/annotations?from=&to=&tags=&limit=`` (epoch ms, every tag must match),
  ``POST /api/annotations`` with ``{time, timeEnd?, tags, text, dashboardUID?, panelId?}``
  (epoch milliseconds); ``PATCH /api/annotations/:id`` with any of ``{time, timeEnd, tags, text}``
  (a field at its zero value is left as it was; a tags list, even an empty one, replaces the tags)
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


def _check_annotation(body: dict[str, Any], patch: bool) -> list[str]:
    # JSON null leaves an optional field unset in Grafana's Go decoding, the same as leaving it out
    # (grafana-client sends ``"timeEnd": null`` for a point annotation).
    body = {k: v for k, v in body.items() if v is not None}
    problems = []
    allowed = {"time", "timeEnd", "tags", "text", "dashboardUID", "dashboardId", "panelId"}
    problems += [f"unknown annotation field {k!r}" for k in set(body) - allowed]
    if not patch and not isinstance(body.get("text"), str):
        problems.append("annotation text is required and must be a string")
    for key in ("time", "timeEnd"):
        if key in body and not (isinstance(body[key], int) and body[key] > 10**12):
            problems.append(f"annotation {key} must be epoch milliseconds, got {body[key]!r}")
    if "tags" in body and not (isinstance(body["tags"], list) and all(isinstance(t, str) for t in body["tags"])):
        problems.append("annotation tags must be a list of strings")
    return problems


def _check_dashboard_upsert(body: dict[str, Any]) -> list[str]:
    problems = [f"unknown field {k!r}" for k in set(body) - {"dashboard", "folderUid", "folderId", "overwrite",
                                                             "message"}]
    dash = body.get("dashboard")
    if not isinstance(dash, dict):
        return [*problems, "dashboard object missing"]
    uid = dash.get("uid")
    if not (isinstance(uid, str) and 0 < len(uid) <= 40):
        problems.append(f"dashboard.uid must be 1-40 characters, got {uid!r}")
    if dash.get("id") not in (None,):
        problems.append("dashboard.id must be null for an upsert by uid")
    if not isinstance(dash.get("title"), str):
        problems.append("dashboard.title missing")
    if not isinstance(body.get("folderUid"), str):
        problems.append("folderUid must name the folder")
    if body.get("overwrite") is not True:
        problems.append("overwrite must be true for an idempotent upsert")
    return problems


@dataclass
class GrafanaRecorder:
    """Start with :meth:`start`; ``requests`` holds what arrived, ``problems`` what broke the documented API."""

    requests: list[Recorded] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)
    datasources: set[str] = field(default_factory=lambda: {"smartmine-influxdb"})
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> GrafanaRecorder:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path, _, query = self.path.partition("?")
                recorder.requests.append(Recorded(self.command, self.path, body, dict(self.headers)))
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    recorder.problems.append(f"{self.command} {path}: no bearer token")
                if self.command == "GET" and path == "/api/annotations":
                    status, answer = recorder.find_annotations(parse_qs(query))
                else:
                    status, answer = recorder.route(self.command, path, body)
                self._reply(status, answer)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def find_annotations(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        unknown = set(query) - {"from", "to", "tags", "limit", "type", "dashboardUID", "panelId", "alertId",
                                "dashboardId", "userId", "matchAny"}
        if unknown:
            self.problems.append(f"GET /api/annotations: unknown parameters {sorted(unknown)}")
        for key in ("from", "to"):
            if key in query and not query[key][0].isdigit():
                self.problems.append(f"GET /api/annotations: {key} must be epoch milliseconds")
        lo = int(query.get("from", ["0"])[0])
        hi = int(query.get("to", [str(2**62)])[0])
        tags = set(query.get("tags", []))
        found = [{"id": i, **a} for i, a in self.annotations.items()
                 if lo <= a.get("time", 0) <= hi and tags <= set(a.get("tags") or [])]
        return 200, found

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        where = f"{method} {path}"
        if (m := re.fullmatch(r"/api/datasources/uid/([A-Za-z0-9_-]+)", path)) and method == "GET":
            if m.group(1) in self.datasources:
                return 200, {"uid": m.group(1), "type": "influxdb", "name": "smartmine InfluxDB"}
            return 404, {"message": "Data source not found"}
        if m := re.fullmatch(r"/api/folders/([A-Za-z0-9_-]+)", path):
            if method == "GET":
                folder = self.folders.get(m.group(1))
                return (200, folder) if folder else (404, {"message": "folder not found"})
        elif path == "/api/folders" and method == "POST":
            if not (isinstance(body, dict) and isinstance(body.get("title"), str) and isinstance(body.get("uid"), str)):
                self.problems.append(f"{where}: body must have uid and title, got {body!r}")
                return 400, {"message": "bad request"}
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[body["uid"]] = {"id": len(self.folders) + 1, "uid": body["uid"], "title": body["title"]}
            return 200, self.folders[body["uid"]]
        elif path == "/api/dashboards/db" and method == "POST":
            problems = _check_dashboard_upsert(body if isinstance(body, dict) else {})
            if body.get("folderUid") not in self.folders:
                problems.append(f"folder {body.get('folderUid')!r} does not exist yet")
            if problems:
                self.problems += [f"{where}: {p}" for p in problems]
                return 400, {"message": "; ".join(problems)}
            uid = body["dashboard"]["uid"]
            version = self.dashboards.get(uid, {}).get("version", 0) + 1
            self.dashboards[uid] = {"dashboard": body["dashboard"], "folderUid": body["folderUid"], "version": version}
            return 200, {"id": len(self.dashboards), "uid": uid, "url": f"/d/{uid}/x", "status": "success",
                         "version": version, "slug": "x"}
        elif path == "/api/annotations" and method == "POST":
            problems = _check_annotation(body if isinstance(body, dict) else {}, patch=False)
            if problems:
                self.problems += [f"{where}: {p}" for p in problems]
                return 400, {"message": "; ".join(problems)}
            ann_id = len(self.annotations) + 1
            self.annotations[ann_id] = dict(body)
            return 200, {"message": "Annotation added", "id": ann_id}
        elif (m := re.fullmatch(r"/api/annotations/(\d+)", path)) and method == "PATCH":
            ann_id = int(m.group(1))
            problems = _check_annotation(body if isinstance(body, dict) else {}, patch=True)
            if ann_id not in self.annotations:
                problems.append(f"annotation {ann_id} does not exist")
            if problems:
                self.problems += [f"{where}: {p}" for p in problems]
                return 400, {"message": "; ".join(problems)}
            # Grafana's PATCH keeps what the body leaves at its zero value (null time, empty text), except the
            # tags: any list given, even an empty one, replaces them.
            existing = self.annotations[ann_id]
            if body.get("tags") is not None:
                existing["tags"] = body["tags"]
            if body.get("text"):
                existing["text"] = body["text"]
            for key in ("time", "timeEnd"):
                if (body.get(key) or 0) > 0:
                    existing[key] = body[key]
            return 200, {"message": "Annotation patched"}
        self.problems.append(f"{where}: not an endpoint of Grafana's HTTP API that smartmine should call")
        return 404, {"message": "not found"}
