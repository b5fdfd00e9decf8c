"""schemathesis against the real server's /openapi.json: no 5xx and no response that breaks the
spec, with a bounded number of examples. The server gets a small token limit so that generated
requests stay short on a CPU."""

import subprocess
import sys
from pathlib import Path

from wickserver import start

BIN, MODEL = sys.argv[1], sys.argv[2]
schemathesis = Path(sys.executable).parent / "schemathesis"

proc, base = start(BIN, MODEL, "--max-total-tokens", "48")
try:
    result = subprocess.run(
        [str(schemathesis), "run", f"{base}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance",
         "--max-examples", "10", "--workers", "1", "--generation-deterministic",
         "--request-timeout", "60"])
    if result.returncode != 0:
        raise SystemExit(f"schemathesis failed with exit code {result.returncode}")
    print("schemathesis checks passed")
finally:
    proc.terminate()
    proc.wait(timeout=60)
