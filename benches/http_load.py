#!/usr/bin/env python3
"""Load generator for benches/http.sh (Python 3.11, standard library only).

Every request body is streamed from the source files with socket.sendfile (zero copy, nothing
buffered in Python), so the client costs the same little CPU whichever server it talks to.
Each subcommand prints one JSON object on stdout; progress and errors go to stderr.

  cairn-ingest URL TOKEN SRC_DIR STREAMS   files job → upload jobs (8 workers) → finalize
  put-ingest   URL SRC_DIR STREAMS         one PUT per file (nginx WebDAV)
  tus-ingest   URL SRC_DIR STREAMS         tus 1.0.0: POST (create) + one PATCH per file
  ranges       URL SIZE CONC DURATION [AUTH]  random 1 MiB Range GETs (fallback for wrk)
  verify       URL SRC_FILE N [AUTH]       N random ranges compared byte-exact with the source
"""

import concurrent.futures as cf
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.parse
from base64 import b64encode

MIB = 1 << 20
TIMEOUT = 900  # seconds; generous for one 256 MiB body on a busy machine


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def split_url(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port, u.path.rstrip("/")


class Client:
    """One keep-alive connection; reopened after any failure."""

    def __init__(self, host, port):
        self.host, self.port, self.conn = host, port, None

    def _conn(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        return self.conn

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, headers=None, body=b"", segments=None, src_dir=None):
        """Sends a request; the body is `body`, or the concatenation of `segments`
        [(file, off, len)] streamed from disk. Returns (status, headers, bytes)."""
        headers = dict(headers or {})
        length = sum(s[2] for s in segments) if segments is not None else len(body)
        try:
            c = self._conn()
            c.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers.items():
                c.putheader(k, v)
            c.putheader("Content-Length", str(length))
            c.endheaders()
            if segments is not None:
                for name, off, ln in segments:
                    with open(os.path.join(src_dir, name), "rb") as f:
                        sent = c.sock.sendfile(f, off, ln)
                    if sent != ln:
                        raise IOError(f"sendfile sent {sent} of {ln} bytes of {name}")
            elif body:
                c.send(body)
            r = c.getresponse()
            data = r.read()
            if r.getheader("Connection", "").lower() == "close":
                self.close()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
        except Exception:
            self.close()
            raise


def expect(status, want, what, data):
    if status not in want:
        raise RuntimeError(f"{what}: HTTP {status}: {data[:300]!r}")


def jbody(obj):
    return json.dumps(obj).encode()


def sources(src_dir, streams):
    names = [f"f{i}" for i in range(streams)]
    return names, [os.path.getsize(os.path.join(src_dir, n)) for n in names]


def lat_summary(lat):
    if not lat:
        return {}
    s = sorted(lat)
    return {
        "n": len(s),
        "min_s": round(s[0], 3),
        "p50_s": round(statistics.median(s), 3),
        "max_s": round(s[-1], 3),
    }


def run_parallel(n_workers, tasks, fn):
    """Runs fn(client, task) for each task on n_workers threads (one connection each)."""
    local = threading.local()
    clients = []
    lock = threading.Lock()

    def wrapped(task):
        if not hasattr(local, "c"):
            local.c = Client(*fn.endpoint)
            with lock:
                clients.append(local.c)
        t0 = time.perf_counter()
        fn(local.c, task)
        return time.perf_counter() - t0

    with cf.ThreadPoolExecutor(n_workers) as ex:
        lat = list(ex.map(wrapped, tasks))  # re-raises the first failure
    for c in clients:
        c.close()
    return lat


def cairn_ingest(url, token, src_dir, streams):
    host, port, base = split_url(url)
    auth = {"Authorization": f"Bearer {token}"}
    jh = dict(auth, **{"Content-Type": "application/json"})
    c = Client(host, port)
    names, sizes = sources(src_dir, streams)

    st, _, d = c.request("POST", f"{base}/qlibs", jh, jbody({"name": "b"}))
    expect(st, (200, 201), "create library", d)
    lib = json.loads(d)["id"]
    st, _, d = c.request("POST", f"{base}/qlibs/{lib}/q", jh, b"")
    expect(st, (200, 201), "create object", d)
    wt = json.loads(d)["write_token"]

    t0 = time.perf_counter()  # first POST of the ingest proper
    ops = [{"path": n, "size": s} for n, s in zip(names, sizes)]
    st, _, d = c.request("POST", f"{base}/q/{wt}/file_jobs", jh, jbody({"ops": ops}))
    expect(st, (200, 201), "create files job", d)
    created = json.loads(d)
    fj, ujs = created["id"], created["jobs"]
    # What each upload job expects: its segments in order (paginated by `next`).
    plan = []
    for uj in ujs:
        segs, start = [], 0
        while True:
            st, _, d = c.request("GET", f"{base}/q/{wt}/file_jobs/{fj}/uploads/{uj}?start={start}", auth)
            expect(st, (200,), f"upload status {uj}", d)
            s = json.loads(d)
            segs += [(f["path"], f["off"], f["len"]) for f in s["files"]]
            if s["next"] < 0:
                break
            start = s["next"]
        plan.append((uj, segs))
    t_plan = time.perf_counter()
    assert sum(ln for _, segs in plan for _, _, ln in segs) == sum(sizes), "plan does not cover the files"

    replies = []

    def upload(cl, job):
        uj, segs = job
        st, _, d = cl.request(
            "POST",
            f"{base}/q/{wt}/file_jobs/{fj}/{uj}",
            dict(auth, **{"Content-Type": "application/octet-stream"}),
            segments=segs,
            src_dir=src_dir,
        )
        expect(st, (200,), f"upload {uj}", d)
        r = json.loads(d)
        if not r.get("complete"):
            raise RuntimeError(f"upload {uj} not complete after its whole body: {r}")
        replies.append(r)

    upload.endpoint = (host, port)
    lat = run_parallel(streams, plan, upload)
    t_up = time.perf_counter()
    st, _, d = c.request("POST", f"{base}/q/{wt}", jh, b"")
    expect(st, (200,), "finalize", d)
    hq = json.loads(d)["hash"]
    t1 = time.perf_counter()
    c.close()
    total = sum(sizes)
    return {
        "bytes": total,
        "seconds": t1 - t0,
        "mib_s": total / MIB / (t1 - t0),
        "plan_s": t_plan - t0,
        "upload_s": t_up - t_plan,
        "finalize_s": t1 - t_up,
        "upload_jobs": len(plan),
        "segments": sum(len(s) for _, s in plan),
        "request_latency": lat_summary(lat),
        "hash": hq,
    }


def put_ingest(url, src_dir, streams):
    host, port, base = split_url(url)
    names, sizes = sources(src_dir, streams)

    def put(cl, i):
        st, _, d = cl.request(
            "PUT",
            f"{base}/{names[i]}",
            {"Content-Type": "application/octet-stream"},
            segments=[(names[i], 0, sizes[i])],
            src_dir=src_dir,
        )
        expect(st, (200, 201, 204), f"PUT {names[i]}", d)

    put.endpoint = (host, port)
    t0 = time.perf_counter()
    lat = run_parallel(streams, range(streams), put)
    t1 = time.perf_counter()
    total = sum(sizes)
    return {"bytes": total, "seconds": t1 - t0, "mib_s": total / MIB / (t1 - t0),
            "requests": streams, "request_latency": lat_summary(lat)}


def tus_ingest(url, src_dir, streams):
    host, port, base = split_url(url)
    names, sizes = sources(src_dir, streams)
    tus = {"Tus-Resumable": "1.0.0"}
    locations = [None] * streams

    def one(cl, i):
        meta = "filename " + b64encode(names[i].encode()).decode()
        st, h, d = cl.request("POST", f"{base}/", dict(tus, **{"Upload-Length": str(sizes[i]), "Upload-Metadata": meta}))
        expect(st, (201,), f"tus create {names[i]}", d)
        loc = urllib.parse.urlsplit(urllib.parse.urljoin(url + "/", h["location"])).path
        st, h, d = cl.request(
            "PATCH",
            loc,
            dict(tus, **{"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}),
            segments=[(names[i], 0, sizes[i])],
            src_dir=src_dir,
        )
        expect(st, (204,), f"tus PATCH {names[i]}", d)
        if int(h.get("upload-offset", -1)) != sizes[i]:
            raise RuntimeError(f"tus {names[i]}: Upload-Offset {h.get('upload-offset')} != {sizes[i]}")
        locations[i] = loc

    one.endpoint = (host, port)
    t0 = time.perf_counter()
    lat = run_parallel(streams, range(streams), one)
    t1 = time.perf_counter()
    total = sum(sizes)
    return {"bytes": total, "seconds": t1 - t0, "mib_s": total / MIB / (t1 - t0),
            "requests": 2 * streams, "request_latency": lat_summary(lat), "locations": locations}


def ranges(url, size, conc, duration, auth=None):
    """Closed-loop random 1 MiB Range GETs; only 206 with exactly 1 MiB counts as a success."""
    host, port, path = split_url(url)
    hdr = {"Authorization": auth} if auth else {}
    stop = time.perf_counter() + duration
    lat, errors, nbytes, lock = [], [], [0], threading.Lock()

    def worker(seed):
        rnd, cl, mine, got = random.Random(seed), Client(host, port), [], 0
        while time.perf_counter() < stop:
            a = rnd.randrange(0, size - MIB + 1)
            t = time.perf_counter()
            try:
                st, _, d = cl.request("GET", path, dict(hdr, Range=f"bytes={a}-{a + MIB - 1}"))
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))
                continue
            if st != 206 or len(d) != MIB:
                with lock:
                    errors.append(f"HTTP {st} len {len(d)}")
                continue
            mine.append(time.perf_counter() - t)
            got += len(d)
        cl.close()
        with lock:
            lat.extend(mine)
            nbytes[0] += got

    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    el = time.perf_counter() - t0
    s = sorted(lat) or [0.0]
    pct = lambda p: s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000  # noqa: E731
    return {"requests": len(lat), "seconds": el, "rps": len(lat) / el, "mib_s": nbytes[0] / MIB / el,
            "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": s[-1] * 1000, "errors": len(errors),
            "error_samples": errors[:3], "tool": "python"}


def verify(url, src, n, auth=None):
    host, port, path = split_url(url)
    size = os.path.getsize(src)
    rnd = random.Random(1)
    cl = Client(host, port)
    hdr = {"Authorization": auth} if auth else {}
    bad = []
    with open(src, "rb") as f:
        for _ in range(n):
            a = rnd.randrange(0, size)
            b = min(size - 1, a + rnd.choice([0, 1, 4095, 65536, MIB - 1, 3 * MIB]))
            st, h, d = cl.request("GET", path, dict(hdr, Range=f"bytes={a}-{b}"))
            f.seek(a)
            want = f.read(b - a + 1)
            if st != 206 or d != want or h.get("content-range") != f"bytes {a}-{b}/{size}":
                bad.append(f"bytes={a}-{b}: HTTP {st}, {len(d)} bytes, Content-Range {h.get('content-range')}")
        st, _, d = cl.request("GET", path, hdr)
        f.seek(0)
        if st != 200 or d != f.read():
            bad.append(f"whole file: HTTP {st}, {len(d)} bytes")
    cl.close()
    return {"checked": n + 1, "bad": len(bad), "bad_samples": bad[:3]}


def main(argv):
    cmd, a = argv[1], argv[2:]
    if cmd == "cairn-ingest":
        out = cairn_ingest(a[0], a[1], a[2], int(a[3]))
    elif cmd == "put-ingest":
        out = put_ingest(a[0], a[1], int(a[2]))
    elif cmd == "tus-ingest":
        out = tus_ingest(a[0], a[1], int(a[2]))
    elif cmd == "ranges":
        out = ranges(a[0], int(a[1]), int(a[2]), float(a[3]), a[4] if len(a) > 4 else None)
    elif cmd == "verify":
        out = verify(a[0], a[1], int(a[2]), a[3] if len(a) > 3 else None)
    else:
        raise SystemExit(__doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as e:  # noqa: BLE001 - one clear line for the shell script
        log(f"http_load {sys.argv[1] if len(sys.argv) > 1 else ''}: {type(e).__name__}: {e}")
        sys.exit(1)
