"""What the fixture scripts share: fetch a catalogue model, and run llama.cpp's llama-server on it
(built by scripts/build-llama-server.sh) on a free loopback port for the length of a `with`."""

import contextlib
import hashlib
import json
import pathlib
import socket
import subprocess
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fetch(name):
    """The path of catalogue model `name` (fetched if needed) and the first 8 hex digits of its
    sha256."""
    model = subprocess.run([ROOT / "scripts/fetch-model.sh", name], check=True,
                           capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256(pathlib.Path(model).read_bytes()).hexdigest()
    return model, digest[:8]


@contextlib.contextmanager
def llama_server(model, *args):
    """llama-server on `model` with `args`, answering at the base URL this yields."""
    server = subprocess.run([ROOT / "scripts/build-llama-server.sh"], check=True,
                            capture_output=True, text=True).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "-m", model, "--host", "127.0.0.1", "--port", str(port),
                             "-t", "2", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{base}/health") as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait()


def post(base, path, body):
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def write_fixture(kind, name, source, cases):
    """fixtures/<kind>-<name>.json, as the Rust tests read it; prints its path."""
    out = ROOT / "fixtures" / f"{kind}-{name}.json"
    out.write_text(json.dumps({"source": source, "cases": cases}, indent=1,
                              ensure_ascii=False) + "\n")
    print(out)
