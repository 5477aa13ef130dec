"""A real OHIF viewer for the integration tests: OHIF's built ``dist`` (npm ``@ohif/app``) served on loopback
with a same-origin proxy to Orthanc's DICOMweb, and headless Chromium driven over the DevTools protocol on
a pipe (``--remote-debugging-pipe``: no port, no websocket library).

The OHIF package is fetched once with ``npm pack`` into ``build/ohif`` (its tarball ships the built
viewer; ``npm install`` would also resolve the source dependencies, which the viewer does not need).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from node_support import free_port

ROOT = Path(__file__).resolve().parents[1]
OHIF_VERSION = "3.13.2"
OHIF_DIR = ROOT / "build" / "ohif"

APP_CONFIG = """\
localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));  // no onboarding tour
window.config = {
  routerBasename: null, extensions: [], modes: [], showStudyList: true,
  investigationalUseDialog: { option: 'never' },
  maxNumberOfWebWorkers: 2, showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false,
  showLoadingIndicator: true, strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (loopback)', name: 'orthanc',
      wadoUriRoot: '/wado', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      staticWado: false, singlepart: 'bulkdata,video',
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


def ohif_dist() -> Path:
    """OHIF's built viewer (``build/ohif/package/dist``), fetched with ``npm pack`` when missing."""
    dist = OHIF_DIR / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise AssertionError("the OHIF viewer test needs npm to fetch @ohif/app (or build/ohif/package/dist)")
    OHIF_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, npm_config_cache=str(OHIF_DIR / ".npm-cache"))  # nothing cached outside build/
    out = subprocess.run(
        [npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--pack-destination", str(OHIF_DIR)],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    tgz = OHIF_DIR / f"ohif-app-{OHIF_VERSION}.tgz"
    if out.returncode != 0 or not tgz.is_file():
        raise AssertionError(f"npm pack @ohif/app@{OHIF_VERSION} failed: {out.stderr[-500:]}")
    with tarfile.open(tgz) as tar:
        tar.extractall(OHIF_DIR, filter="data")
    tgz.unlink()
    shutil.rmtree(OHIF_DIR / ".npm-cache", ignore_errors=True)
    return dist


class ViewerServer:
    """OHIF's ``dist`` with our ``app-config.js`` on 127.0.0.1, ``/dicom-web`` proxied to Orthanc (same
    origin, so no CORS); unknown paths get ``index.html`` (OHIF's client-side routes)."""

    def __init__(self, dist: Path, site: Path, orthanc_url: str) -> None:
        shutil.copytree(dist, site, ignore=shutil.ignore_patterns("app-config.js"))
        (site / "app-config.js").write_text(APP_CONFIG)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, int]] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(site), **kwargs)

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/dicom-web"):
                    self._proxy()
                    return
                if not (site / self.path.split("?")[0].lstrip("/")).is_file():
                    self.path = "/index.html"
                super().do_GET()

            def _proxy(self) -> None:
                accept = self.headers.get("Accept", "*/*")
                req = urllib.request.Request(orthanc_url + self.path, headers={"Accept": accept})
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        code, body, ctype = resp.status, resp.read(), resp.headers.get("Content-Type")
                except urllib.error.HTTPError as exc:
                    code, body, ctype = exc.code, exc.read(), exc.headers.get("Content-Type")
                server.requests.append((self.path, code))
                self.send_response(code)
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ViewerServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Browser:
    """Headless Chromium on ``--remote-debugging-pipe`` (fd 3 commands, fd 4 replies, NUL-separated JSON)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise AssertionError("the OHIF viewer test needs Debian's chromium")
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        def pipes() -> None:
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader"]
        args += ["--enable-unsafe-swiftshader", f"--window-size={width},{height}", "--hide-scrollbars"]
        args += ["--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            args, preexec_fn=pipes, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_child)
        os.close(from_child)
        self._id = 0
        self._buf = b""
        self.errors: list[str] = []  # uncaught page exceptions (Runtime.exceptionThrown), first lines
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})[
            "sessionId"
        ]
        self.call("Runtime.enable")

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if method.split(".")[0] not in ("Target", "Browser"):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise AssertionError(f"Chromium did not answer {method} within {timeout} s")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise AssertionError("Chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("method") == "Runtime.exceptionThrown":
                details = reply["params"]["exceptionDetails"]
                self.errors.append(
                    str(details.get("exception", {}).get("description", details.get("text")))[:300]
                )
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            return None
        return res["result"].get("value")

    def wait(self, expression: str, timeout: float, what: str) -> Any:
        """Poll a JavaScript expression until it is truthy; fail naming ``what`` and the page text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        text = self.evaluate("document.body ? document.body.innerText : ''") or ""
        raise AssertionError(f"OHIF: {what} not seen within {timeout} s; page text: {text[-600:]!r}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(AssertionError):  # it may close the pipe before answering
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


# JavaScript: the displayed image of the first cornerstone viewport and where its pixels land on the page:
# ``origin`` is the page position (CSS px = screenshot px) of pixel (row 0, column 0)'s centre, ``col`` and
# ``row`` the page steps of one column / one row.
VIEWPORT_GEOMETRY = """(() => {
  const engine = window.cornerstone && window.cornerstone.getRenderingEngines()[0];
  if (!engine) return null;
  const vp = engine.getViewports().find(v => v.getCurrentImageId && v.getCurrentImageId());
  if (!vp) return null;
  const id = vp.getCurrentImageId();
  const box = vp.canvas.getBoundingClientRect();
  const u = window.cornerstone.utilities;
  const page = p => {
    const c = vp.worldToCanvas(u.imageToWorldCoords(id, p));
    return [box.left + c[0], box.top + c[1]];
  };
  const o = page([0, 0]), x = page([1, 0]), y = page([0, 1]);
  return { imageId: id, origin: o, col: [x[0] - o[0], x[1] - o[1]], row: [y[0] - o[0], y[1] - o[1]],
           viewport: [box.left, box.top, box.width, box.height] };
})()"""


def sop_uid_of(image_id: str) -> str:
    """The SOP Instance UID in a WADO-RS image id (``.../instances/<uid>/frames/<n>``)."""
    match = re.search(r"/instances/([0-9.]+)", image_id)
    if match is None:
        raise AssertionError(f"no SOP Instance UID in image id {image_id!r}")
    return match.group(1)
