// The live server panel: running and waiting requests and KV cache use (from `/info`), and the
// tokens the server generates per second (from `/metrics`), each with a small chart of the
// last minute, polled once a second.

import { el } from "./markdown.js";
import { getJson, getText } from "./api.js";

const SAMPLES = 60;

class Chart {
  constructor(label, format) {
    this.format = format;
    this.values = [];
    this.value = el("span", { class: "value", text: "–" });
    this.canvas = el("canvas", { width: "120", height: "28" });
    this.node = el("div", { class: "gauge" }, el("span", { class: "label", text: label }), this.value, this.canvas);
  }

  push(v) {
    this.values.push(v);
    if (this.values.length > SAMPLES) this.values.shift();
    this.value.textContent = this.format(v);
    this.node.dataset.value = String(v);
    this.draw();
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    ctx.clearRect(0, 0, width, height);
    const top = Math.max(1e-9, ...this.values);
    ctx.strokeStyle = getComputedStyle(this.node).color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    this.values.forEach((v, i) => {
      const x = (i / (SAMPLES - 1)) * (width - 2) + 1;
      const y = height - 2 - (v / top) * (height - 4);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

// Sums every series of `name` in a Prometheus text exposition.
export function metricSum(text, name) {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (match && match[1] === name) sum += Number(match[3]);
  }
  return sum;
}

export class Panel {
  constructor(root, status) {
    this.status = status;
    this.running = new Chart("running", (v) => String(v));
    this.waiting = new Chart("waiting", (v) => String(v));
    this.kv = new Chart("KV cache", (v) => `${(v * 100).toFixed(1)}%`);
    this.rate = new Chart("tokens/s", (v) => v.toFixed(1));
    root.append(this.running.node, this.waiting.node, this.kv.node, this.rate.node);
    this.lastTokens = null;
    this.timer = null;
  }

  start() {
    if (this.timer) return;
    this.poll();
    this.timer = setInterval(() => this.poll(), 1000);
  }

  async poll() {
    try {
      const [info, metrics] = await Promise.all([getJson("/info"), getText("/metrics")]);
      this.running.push(info.requests_running);
      this.waiting.push(info.requests_waiting);
      const total = info.kv_blocks_total || 1;
      this.kv.push((info.kv_blocks_total - info.kv_blocks_free) / total);
      const tokens = metricSum(metrics, "wick_generation_tokens_total");
      const now = performance.now();
      if (this.lastTokens) {
        const seconds = (now - this.lastTokens.at) / 1000;
        this.rate.push(Math.max(0, tokens - this.lastTokens.tokens) / seconds);
      }
      this.lastTokens = { tokens, at: now };
      this.status(info, null);
    } catch (e) {
      this.status(null, e);
    }
  }
}
