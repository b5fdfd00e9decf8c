// The server's API as the page uses it: the API key (kept in this tab's session storage only),
// JSON requests, and streamed chat completions read as server-sent events.

const KEY_ITEM = "wick-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) {
    sessionStorage.setItem(KEY_ITEM, key);
  } else {
    sessionStorage.removeItem(KEY_ITEM);
  }
}

function headers(json) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  const key = apiKey();
  if (key) h["authorization"] = `Bearer ${key}`;
  return h;
}

// An error the server answered, with its status and the message of its error body.
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // Not JSON: the status line says it.
  }
  return new ApiError(response.status, message);
}

export async function getJson(path, { auth = false } = {}) {
  const response = await fetch(path, { headers: auth ? headers(false) : {} });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function getText(path) {
  const response = await fetch(path);
  if (!response.ok) throw await failure(response);
  return response.text();
}

// Checks the stored key against a generation-side route (401 when it is wrong).
export async function checkKey() {
  return getJson("/v1/models", { auth: true });
}

// Streams a chat completion: yields each parsed `data:` chunk until `[DONE]`. Aborting `signal`
// drops the connection, which the server takes as a cancellation.
export async function* streamChat(body, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(true),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(0, chunk.error.message || "stream error");
      yield chunk;
    }
  }
}
