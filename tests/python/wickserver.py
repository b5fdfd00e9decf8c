"""Starts `wick serve` on 127.0.0.1 port 0 for the Python checks and waits until it is ready."""

import subprocess
import time
import urllib.error
import urllib.request


def start(binary, model, *extra, env=None):
    proc = subprocess.Popen(
        [binary, "serve", "--host", "127.0.0.1", "--port", "0", "--model", model,
         "--served-model-name", "smol", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    base = None
    for line in proc.stdout:
        if line.startswith("wick: listening on "):
            base = line.strip().removeprefix("wick: listening on ")
            break
    if base is None:
        raise SystemExit("the server exited before listening")
    for _ in range(1200):
        try:
            with urllib.request.urlopen(f"{base}/ready") as r:
                if r.status == 200:
                    return proc, base
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not become ready")
