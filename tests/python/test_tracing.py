"""OpenTelemetry traces of the real server: a small OTLP/HTTP receiver on 127.0.0.1 decodes what
Wick exports (opentelemetry-proto), a request sent with a W3C traceparent comes back as one trace
under the caller's span, with its stages (validation, queue, prefill and its chunks, decode) as
child spans and its attributes (request id, prompt, cached and generated tokens, finish reason);
a streamed request's span lasts as long as its stream; and a server started without
--otlp-endpoint sends nothing, even with the standard OTEL_EXPORTER_OTLP_ENDPOINT set.

Run by scripts/test.sh with the server binary and the real model.
"""

import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from wickserver import start

BIN, MODEL = sys.argv[1], sys.argv[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver(BaseHTTPRequestHandler):
    spans = []
    posts = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        assert self.path == "/v1/traces", self.path
        assert self.headers["content-type"] == "application/x-protobuf", self.headers
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert service.get("service.name") == "wick", service
            for ss in rs.scope_spans:
                Receiver.spans.extend(ss.spans)
        Receiver.posts += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_):
        pass


def attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else (
            v.int_value if v.HasField("int_value") else v.double_value if v.HasField("double_value")
            else v.bool_value)
    return out


def post(base, path, body, headers):
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **headers})
    with urllib.request.urlopen(req) as r:
        return r.read().decode()


def wait_for(predicate, what, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; spans: {[s.name for s in Receiver.spans]}")


def main():
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    collector = f"http://127.0.0.1:{receiver.server_port}"
    env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100"}

    # No --otlp-endpoint: nothing is sent, even with the SDK's standard variable pointing at the
    # receiver.
    quiet_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector}
    proc, base = start(BIN, MODEL, env=quiet_env)
    try:
        post(base, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                            "max_tokens": 4},
             {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        time.sleep(1.0)
    finally:
        proc.terminate()
        proc.wait()
    assert Receiver.posts == 0, f"a server without --otlp-endpoint sent {Receiver.posts} exports"
    print("tracing: nothing sent without --otlp-endpoint")

    proc, base = start(BIN, MODEL, "--otlp-endpoint", collector, env=env)
    try:
        answer = json.loads(post(
            base, "/v1/chat/completions",
            # Over --max-batch-tokens (256): the prompt is computed in two chunks or more.
            {"messages": [{"role": "user", "content": "Name three colours. " * 60}],
             "max_tokens": 12, "temperature": 0},
            {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "x-request-id": "trace-test-1"}))
        usage = answer["usage"]
        chat = "POST /v1/chat/completions"
        wait_for(lambda: any(s.name == chat for s in Receiver.spans), "the request span")
        wait_for(lambda: len({s.name for s in Receiver.spans}) >= 6, "every stage")

        spans = [s for s in Receiver.spans if s.trace_id.hex() == TRACE_ID]
        assert len(spans) == len(Receiver.spans), "spans outside the caller's trace"
        by_name = {}
        for s in spans:
            by_name.setdefault(s.name, []).append(s)
        (root,) = by_name.pop(chat)
        assert root.parent_span_id.hex() == PARENT_ID, "the request span is not the caller's child"
        assert root.kind == root.SPAN_KIND_SERVER, root.kind
        a = attrs(root)
        assert a["wick.request_id"] == "trace-test-1", a
        assert a["http.route"] == "/v1/chat/completions", a
        assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"], (a, usage)
        assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"], (a, usage)
        assert a["wick.cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"], a
        assert a["gen_ai.response.finish_reasons"] == answer["choices"][0]["finish_reason"], a
        root_id = root.span_id
        for stage in ("validation", "queue", "prefill", "decode"):
            (s,) = by_name[stage]
            assert s.parent_span_id == root_id, f"{stage} is not the request's child"
            assert root.start_time_unix_nano <= s.start_time_unix_nano, stage
            assert s.end_time_unix_nano <= root.end_time_unix_nano, stage
        # The stages follow each other; the prompt's chunks are the prefill's children.
        order = [by_name[n][0] for n in ("validation", "queue", "prefill", "decode")]
        for before, after in zip(order, order[1:]):
            assert before.end_time_unix_nano <= after.start_time_unix_nano, (before.name, after.name)
        chunks = by_name["prefill_chunk"]
        assert len(chunks) >= 2, f"{usage['prompt_tokens']} prompt tokens in {len(chunks)} chunk"
        prefill = by_name["prefill"][0]
        assert all(c.parent_span_id == prefill.span_id for c in chunks)
        assert sum(attrs(c)["wick.tokens"] for c in chunks) == usage["prompt_tokens"], \
            [attrs(c) for c in chunks]
        decode = attrs(by_name["decode"][0])
        assert decode["gen_ai.usage.output_tokens"] == usage["completion_tokens"], decode
        print(f"tracing: one trace under the caller's span: {sorted(by_name)}, "
              f"{len(chunks)} prefill chunk(s), attributes {a}")

        # A streamed request's span ends with its stream, after its decode.
        Receiver.spans.clear()
        stream = post(base, "/v1/completions",
                      {"prompt": "Once upon a time", "max_tokens": 8, "stream": True}, {})
        assert stream.rstrip().endswith("data: [DONE]"), stream
        completions = "POST /v1/completions"
        wait_for(lambda: any(s.name == completions for s in Receiver.spans), "the streamed request")
        (root,) = [s for s in Receiver.spans if s.name == completions]
        (decode,) = [s for s in Receiver.spans if s.name == "decode"]
        assert decode.end_time_unix_nano <= root.end_time_unix_nano
        assert len(root.parent_span_id) == 0, "a request without traceparent starts its own trace"
        assert decode.trace_id == root.trace_id
        print("tracing: a streamed request's span covers its stream")
    finally:
        proc.terminate()
        proc.wait()
        receiver.shutdown()
    print("tracing checks passed")


if __name__ == "__main__":
    main()
