// The conversation: its messages, how each is shown (Markdown or token by token with
// log-probabilities, tool calls, a structured answer parsed, the answer's timings), and the
// streamed request that writes an answer (stop aborts it; edit and regenerate rewrite the end
// of the conversation and ask again).

import { el, render, copyButton } from "./markdown.js";
import { streamChat } from "./api.js";

export class Chat {
  // `request()` gives the request's fields other than the messages (sampling, structured
  // output) and `system()` the system prompt; `busy(bool)` is told when a stream starts and ends.
  constructor(root, { request, system, busy }) {
    this.root = root;
    this.request = request;
    this.system = system;
    this.busy = busy;
    this.messages = [];
    this.controller = null;
    this.tip = el("div", { class: "tip", hidden: "" });
    document.body.append(this.tip);
  }

  get streaming() {
    return this.controller !== null;
  }

  send(text) {
    if (this.streaming || !text.trim()) return;
    this.messages.push({ role: "user", content: text });
    this.answer();
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  clear() {
    this.stop();
    this.messages = [];
    this.redraw();
  }

  // Asks for the next assistant message after the conversation so far.
  async answer() {
    let params;
    try {
      params = this.request();
    } catch (e) {
      this.messages.push({ role: "assistant", content: "", state: "error", tokens: [], stats: {}, error: `Settings: ${e.message}` });
      this.redraw();
      return;
    }
    const history = this.messages.map((m) => {
      const out = { role: m.role, content: m.content };
      if (m.tool_calls && m.tool_calls.length) out.tool_calls = m.tool_calls;
      return out;
    });
    const system = this.system();
    if (system.trim()) history.unshift({ role: "system", content: system });
    const msg = {
      role: "assistant",
      content: "",
      state: "streaming",
      tokens: [],
      tool_calls: [],
      format: params.response_format ? params.response_format.type : null,
      view: "text",
      stats: { sent: performance.now() },
    };
    this.messages.push(msg);
    this.redraw();
    this.controller = new AbortController();
    this.busy(true);
    try {
      const body = { ...params, messages: history, stream_options: { include_usage: true } };
      for await (const chunk of streamChat(body, this.controller.signal)) this.take(msg, chunk);
      msg.state = "done";
    } catch (e) {
      if (e.name === "AbortError") {
        msg.state = "stopped";
      } else {
        msg.state = "error";
        msg.error = e.status ? `${e.status}: ${e.message}` : e.message;
      }
    } finally {
      msg.stats.end = performance.now();
      this.controller = null;
      this.busy(false);
      this.update(msg);
    }
  }

  // One streamed chunk into the message.
  take(msg, chunk) {
    if (chunk.usage) msg.usage = chunk.usage;
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) return;
    const delta = choice.delta || {};
    if (delta.content || delta.tool_calls) msg.stats.first ??= performance.now();
    if (delta.content) msg.content += delta.content;
    for (const call of delta.tool_calls || []) {
      const at = (msg.tool_calls[call.index] ??= { id: "", type: "function", function: { name: "", arguments: "" } });
      if (call.id) at.id = call.id;
      if (call.function && call.function.name) at.function.name += call.function.name;
      if (call.function && call.function.arguments) at.function.arguments += call.function.arguments;
    }
    if (choice.logprobs && choice.logprobs.content) msg.tokens.push(...choice.logprobs.content);
    if (choice.finish_reason) msg.finish = choice.finish_reason;
    this.update(msg);
  }

  redraw() {
    this.root.replaceChildren(...this.messages.map((m, i) => this.view(m, i)));
    this.root.scrollTop = this.root.scrollHeight;
  }

  // Redraws one message at most once a frame.
  update(msg) {
    if (msg.pending) return;
    msg.pending = true;
    requestAnimationFrame(() => {
      msg.pending = false;
      const i = this.messages.indexOf(msg);
      const old = this.root.children[i];
      if (!old) return;
      const stick = this.root.scrollHeight - this.root.scrollTop - this.root.clientHeight < 40;
      old.replaceWith(this.view(msg, i));
      if (stick) this.root.scrollTop = this.root.scrollHeight;
    });
  }

  view(msg, i) {
    const last = i === this.messages.length - 1;
    const actions = el("div", { class: "actions" });
    if (msg.role === "user" && !this.streaming) {
      actions.append(el("button", { type: "button", text: "Edit", onclick: () => this.edit(i) }));
    }
    if (msg.role === "assistant" && last && !this.streaming) {
      actions.append(el("button", { type: "button", class: "regenerate", text: "Regenerate", onclick: () => this.regenerate() }));
    }
    if (msg.role === "assistant" && msg.tokens.length) {
      const next = msg.view === "text" ? "tokens" : "text";
      actions.append(el("button", { type: "button", class: "toggle-view", text: next === "tokens" ? "Tokens" : "Text", onclick: () => { msg.view = next; this.update(msg); } }));
    }
    actions.append(copyButton(() => msg.content));
    const body = el("div", { class: "body" });
    if (msg.role === "assistant" && msg.view === "tokens") body.append(this.tokens(msg));
    else if (msg.role === "assistant") body.append(render(msg.content));
    else body.append(el("div", { class: "plain", text: msg.content }));
    const node = el("div", { class: `message ${msg.role}`, "data-state": msg.state || "done" },
      el("div", { class: "head" }, el("span", { class: "role", text: msg.role }), actions), body);
    if (msg.tool_calls && msg.tool_calls.length) node.append(this.toolCalls(msg.tool_calls));
    if (msg.state === "done" && (msg.format === "json_schema" || msg.format === "json_object")) node.append(this.parsed(msg.content));
    if (msg.role === "assistant") node.append(this.stats(msg));
    if (msg.error) node.append(el("div", { class: "error", text: msg.error }));
    return node;
  }

  tokens(msg) {
    const out = el("div", { class: "tokens" });
    for (const t of msg.tokens) {
      const p = Math.exp(t.logprob);
      const span = el("span", { class: "token", text: t.token });
      span.style.setProperty("--p", p.toFixed(3));
      span.addEventListener("mouseenter", () => this.showTip(span, t));
      span.addEventListener("mouseleave", () => (this.tip.hidden = true));
      out.append(span);
    }
    return out;
  }

  showTip(span, t) {
    const rows = [el("div", { class: "tip-head", text: `${JSON.stringify(t.token)}  p=${Math.exp(t.logprob).toFixed(4)}  logprob=${t.logprob.toFixed(3)}` })];
    for (const alt of t.top_logprobs || []) {
      rows.push(el("div", { class: alt.token === t.token ? "alt chosen" : "alt" },
        el("span", { text: JSON.stringify(alt.token) }), el("span", { text: (Math.exp(alt.logprob) * 100).toFixed(1) + "%" })));
    }
    this.tip.replaceChildren(...rows);
    const box = span.getBoundingClientRect();
    this.tip.style.left = `${Math.round(box.left + window.scrollX)}px`;
    this.tip.style.top = `${Math.round(box.bottom + window.scrollY + 4)}px`;
    this.tip.hidden = false;
  }

  toolCalls(calls) {
    const out = el("div", { class: "tool-calls" });
    for (const call of calls) {
      let args = call.function.arguments;
      try {
        args = JSON.stringify(JSON.parse(args), null, 2);
      } catch (_) {
        // Still streaming, or not JSON: shown as it came.
      }
      out.append(el("div", { class: "tool-call" }, el("div", { class: "tool-name", text: `tool call: ${call.function.name}` }), el("pre", { text: args })));
    }
    return out;
  }

  parsed(content) {
    try {
      const value = JSON.parse(content);
      return el("div", { class: "parsed" }, el("div", { class: "parsed-head", text: "Parsed JSON" }), el("pre", { text: JSON.stringify(value, null, 2) }));
    } catch (e) {
      return el("div", { class: "parsed invalid", text: `Not valid JSON: ${e.message}` });
    }
  }

  stats(msg) {
    const s = msg.stats;
    const parts = [];
    if (s.first) parts.push(`TTFT ${Math.round(s.first - s.sent)} ms`);
    const usage = msg.usage;
    const generated = usage ? usage.completion_tokens : msg.tokens.length;
    const now = s.end || performance.now();
    if (s.first && generated > 1 && now > s.first) {
      parts.push(`${((generated - 1) / ((now - s.first) / 1000)).toFixed(1)} tokens/s`);
    }
    if (generated) parts.push(`${generated} tokens`);
    if (usage) {
      const cached = (usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens) || 0;
      parts.push(`prompt ${usage.prompt_tokens} (cached ${cached})`);
    }
    if (msg.finish) parts.push(`finish: ${msg.finish}`);
    if (msg.state === "stopped") parts.push("stopped");
    if (msg.state === "streaming") parts.push("…");
    return el("div", { class: "stats", text: parts.join(" · ") });
  }

  edit(i) {
    const node = this.root.children[i];
    const area = el("textarea", { class: "edit-area", rows: "3" });
    area.value = this.messages[i].content;
    const save = () => {
      if (!area.value.trim()) return;
      this.messages = this.messages.slice(0, i);
      this.send(area.value);
    };
    const box = el("div", { class: "edit" }, area,
      el("div", { class: "actions" }, el("button", { type: "button", text: "Save and send", onclick: save }),
        el("button", { type: "button", text: "Cancel", onclick: () => this.redraw() })));
    node.querySelector(".body").replaceWith(box);
    area.focus();
  }

  regenerate() {
    if (this.streaming) return;
    const last = this.messages[this.messages.length - 1];
    if (last && last.role === "assistant") this.messages.pop();
    this.answer();
  }
}
