#!/usr/bin/env python3
"""`serve` against hostile clients, as an attacker drives it, one attack per
fresh server process, with the figure each attack moves:

  trickle   3,000 sockets trickling a header line every 0.5 s: after 15 s,
            how many the server still holds; a verify's and a probe's time
  bodies    96 clients posting 7.7 MB bodies at once: the server's peak RSS
  array     1.1 million images in a 7.7 MB body: the answer, its time, RSS
  metadata  8 people enrolled with 64 KiB of control characters, then 8
            listings: the server's peak RSS
  decode    a PNG of 6,324 x 6,324 16-bit RGBA (320 MB decoded): the
            answer, its time, the server's peak RSS
  drain     SIGTERM, then /readyz polled on new connections: 503s seen

Usage: python3 benches/hostile.py SERVE_BINARY [ATTACK...]
(the binary is started with flags every version takes; run it for two
builds to compare them, as docs/hostile-input.md does).
"""
import base64, json, os, signal, socket, subprocess, sys, tempfile, threading, time, zlib, struct
import urllib.request, urllib.error

ASSETS = os.path.join(os.path.dirname(__file__), "..", "assets")
TOKEN = "hostile-bench"


class Serve:
    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="hostile-")
        open(os.path.join(self.dir, "t"), "w").write(TOKEN + "\n")
        self.p = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--token-file", os.path.join(self.dir, "t"),
             "--assets", ASSETS, "--threads", "1", "--index", os.path.join(self.dir, "g.fpi")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.p.stdout.readline().decode()
        self.addr = line.strip().removeprefix("listening on ")
        host, port = self.addr.rsplit(":", 1)
        self.host, self.port = host, int(port)
        for _ in range(600):
            if self.status("GET", "/readyz") == 200:
                break
            time.sleep(0.1)

    def status(self, method, path, body=None, timeout=120):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode())
        req = urllib.request.Request(f"http://{self.addr}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except Exception:
            return None

    def rss(self):
        vals = {}
        for line in open(f"/proc/{self.p.pid}/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0]) * 1024
        return vals.get("VmRSS", 0), vals.get("VmHWM", 0)

    def fds(self):
        return len(os.listdir(f"/proc/{self.p.pid}/fd"))

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def photo(i=0):
    d = os.path.join(ASSETS, "photos/johns/John_Simm")
    return open(os.path.join(d, sorted(os.listdir(d))[i]), "rb").read()


def b64(b):
    return base64.b64encode(b).decode()


def trickle(s):
    socks = []
    for _ in range(3000):
        try:
            c = socket.create_connection((s.host, s.port), timeout=5)
            c.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
            c.setblocking(False)
            socks.append(c)
        except OSError:
            break
    t0 = time.time()
    v = s.status("POST", "/v1/verify", {"image1": b64(photo(0)), "image2": b64(photo(1))}, timeout=60)
    tv = time.time() - t0
    t0 = time.time()
    p = s.status("GET", "/livez", timeout=60)
    tp = time.time() - t0
    fds = s.fds()
    end = time.time() + 15
    while time.time() < end:
        for c in socks:
            try:
                c.send(b"X-Slow: 1\r\n")
            except OSError:
                pass
        time.sleep(0.5)
    held = 0
    for c in socks:
        try:
            if c.recv(1) == b"":
                continue
            held += 1
        except BlockingIOError:
            held += 1
        except OSError:
            pass
    return f"{len(socks)} sockets opened; verify {v} in {tv*1000:.0f} ms, probe {p} in {tp*1000:.0f} ms; {fds} descriptors; after 15 s still held: {held}"


def bodies(s):
    noise = bytes((i * 2654435761 >> 13) & 255 for i in range(2_900_000))
    body = json.dumps({"image1": b64(noise), "image2": b64(noise)}, separators=(",", ":")).encode()
    before = s.rss()[1]
    out = []
    go = threading.Barrier(96)

    def one():
        go.wait()
        out.append(s.status("POST", "/v1/verify", body))

    ts = [threading.Thread(target=one) for _ in range(96)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    grown = (s.rss()[1] - before) >> 20
    count = {c: out.count(c) for c in set(out)}
    return f"96 bodies of {len(body)/1e6:.1f} MB: answers {count}; peak RSS grew {grown} MiB"


def array(s):
    body = ('{"source":"AA==","targets":[' + ",".join(['"AA=="'] * 1_100_000) + "]}").encode()
    before = s.rss()[1]
    t0 = time.time()
    c = s.status("POST", "/v1/verify/batch", body)
    took = time.time() - t0
    return f"1.1 M targets in {len(body)/1e6:.1f} MB: {c} in {took*1000:.0f} ms; peak RSS grew {(s.rss()[1]-before)>>20} MiB"


def metadata(s):
    meta = "\x01" * (64 << 10)
    codes = [s.status("PUT", f"/v1/people/p{i}", {"images": [b64(photo(i))], "meta": meta}) for i in range(8)]
    before = s.rss()[1]
    lists = [s.status("GET", "/v1/people?limit=1000") for _ in range(8)]
    return f"enrolls {codes}; 8 listings {set(lists)}; peak RSS grew {(s.rss()[1]-before)>>20} MiB"


def png_rgba16(w, h):
    """A real PNG of w x h 16-bit RGBA pixels (all zero), compressed."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (w * 8)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def decode(s):
    png = png_rgba16(6324, 6324)
    body = {"image": b64(png)}
    before = s.rss()[1]
    t0 = time.time()
    c = s.status("POST", "/v1/embed", body)
    return f"a {len(png)/1e3:.0f} KB PNG of 6324x6324 RGBA16 (320 MB decoded): {c} in {(time.time()-t0)*1000:.0f} ms; peak RSS grew {(s.rss()[1]-before)>>20} MiB"


def drain(s):
    s.p.send_signal(signal.SIGTERM)
    seen = {}
    end = time.time() + 3
    while time.time() < end and s.p.poll() is None:
        c = s.status("GET", "/readyz", timeout=2)
        seen[c] = seen.get(c, 0) + 1
        time.sleep(0.05)
    s.p.wait(timeout=60)
    return f"/readyz on new connections after SIGTERM: {seen}; exit {s.p.returncode}"


ATTACKS = {"trickle": trickle, "bodies": bodies, "array": array, "metadata": metadata,
           "decode": decode, "drain": drain}

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (16384, max(16384, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    for name in sys.argv[2:] or list(ATTACKS):
        s = Serve(sys.argv[1])
        try:
            print(f"{name}: {ATTACKS[name](s)}", flush=True)
        finally:
            s.stop()
