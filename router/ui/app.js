// The playground's entry point: reads the page's configuration, asks for the API key where the
// server needs one (and calls nothing until it has one that works), then wires the settings,
// the conversation and the live server panel together.

import { ApiError, apiKey, checkKey, getJson, setApiKey } from "./api.js";
import { Chat } from "./chat.js";
import { Panel } from "./panel.js";

const $ = (id) => document.getElementById(id);

// A number field's value, or undefined when it is empty.
function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

// What the settings ask of each request, beside the messages.
function request() {
  const body = {
    temperature: number("temperature"),
    top_p: number("top_p"),
    top_k: number("top_k"),
    min_p: number("min_p"),
    max_tokens: number("max_tokens"),
    seed: number("seed"),
  };
  const stops = $("stop").value.split("\n").filter((s) => s.length);
  if (stops.length) body.stop = stops;
  if ($("logprobs").checked) {
    body.logprobs = true;
    body.top_logprobs = 5;
  }
  const mode = $("format").value;
  const spec = $("format-spec").value.trim();
  if (mode === "json_schema") {
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse(spec || "{}"), strict: true } };
  } else if (mode === "json_object") {
    body.response_format = { type: "json_object" };
  } else if (mode === "regex") {
    body.response_format = { type: "regex", regex: spec };
  } else if (mode === "tools") {
    body.tools = JSON.parse(spec || "[]");
    if ($("tool-required").checked) body.tool_choice = "required";
  }
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  return body;
}

const EXAMPLES = {
  json_schema: JSON.stringify({ type: "object", properties: { name: { type: "string" }, age: { type: "integer" } }, required: ["name", "age"] }, null, 2),
  regex: "(yes|no), because [a-z ]{10,60}\\.",
  tools: JSON.stringify([{ type: "function", function: { name: "get_weather", description: "The weather in a city", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }], null, 2),
};

// Each mode keeps its own text (an example to start with) when another is chosen.
const specs = { ...EXAMPLES };

function showFormat() {
  const mode = $("format").value;
  const spec = $("format-spec");
  if (spec.dataset.mode in specs) specs[spec.dataset.mode] = spec.value;
  spec.hidden = !(mode in specs);
  spec.value = specs[mode] || "";
  spec.dataset.mode = mode;
  $("tool-required-box").hidden = mode !== "tools";
}

function serverStatus(info, error) {
  const status = $("server-status");
  if (error) {
    status.textContent = error.status === 503 ? "server loading or draining" : `server unreachable: ${error.message}`;
    status.className = "bad";
    return;
  }
  status.textContent = `${info.served_model_name} · ${info.architecture} · ${info.device} · Wick ${info.version}`;
  status.className = "ok";
}

// Asks for a key until one works; resolves once it does.
function askKey(message) {
  const dialog = $("key-dialog");
  $("key-error").textContent = message || "";
  $("key-error").hidden = !message;
  // Nothing works without a key: the dialog stays until one does.
  dialog.oncancel = (event) => event.preventDefault();
  if (!dialog.open) dialog.showModal();
  return new Promise((resolve) => {
    $("key-form").onsubmit = async (event) => {
      event.preventDefault();
      setApiKey($("key-input").value.trim());
      try {
        await checkKey();
        dialog.close();
        resolve();
      } catch (e) {
        setApiKey("");
        $("key-error").textContent = e instanceof ApiError ? `${e.status}: ${e.message}` : e.message;
        $("key-error").hidden = false;
      }
    };
  });
}

async function main() {
  const config = await getJson("/ui/config.json");
  if (config.api_key_required) {
    let ok = false;
    if (apiKey()) {
      try {
        await checkKey();
        ok = true;
      } catch (_) {
        setApiKey("");
      }
    }
    if (!ok) await askKey();
    $("forget-key").hidden = false;
  }
  const input = $("input");
  const chat = new Chat($("messages"), {
    request,
    system: () => $("system").value,
    busy: (busy) => {
      $("send").disabled = busy;
      $("stop-button").disabled = !busy;
      document.body.dataset.busy = busy ? "1" : "0";
    },
  });
  const send = () => {
    try {
      request();
    } catch (e) {
      $("format-error").textContent = `Structured output: ${e.message}`;
      return;
    }
    $("format-error").textContent = "";
    chat.send(input.value);
    input.value = "";
  };
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      send();
    }
  });
  $("stop-button").addEventListener("click", () => chat.stop());
  $("clear").addEventListener("click", () => chat.clear());
  $("format").addEventListener("change", showFormat);
  $("forget-key").addEventListener("click", () => {
    setApiKey("");
    location.reload();
  });
  showFormat();
  new Panel($("panel"), serverStatus).start();
  document.body.dataset.ready = "1";
}

main().catch((e) => {
  $("server-status").textContent = `The page could not start: ${e.message}`;
  $("server-status").className = "bad";
});
