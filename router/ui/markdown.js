// Markdown to DOM, safely: model output is untrusted, so every piece of its text becomes a text
// node (never HTML); only the elements built here exist. Blocks: fenced code (with a copy
// button; an unclosed fence runs to the end, as while streaming), headings, lists, quotes,
// rules, paragraphs. Inline: code spans, bold, italics and links to http(s) addresses.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child != null) node.append(child);
  }
  return node;
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    const area = el("textarea", { class: "offscreen" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}

export function copyButton(getText, label = "Copy") {
  const button = el("button", { class: "copy", type: "button", text: label });
  button.addEventListener("click", async () => {
    await copyText(getText());
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = label), 1200);
  });
  return button;
}

function codeBlock(lang, lines) {
  const code = el("code", { text: lines.join("\n") });
  const head = el("div", { class: "code-head" }, el("span", { text: lang || "code" }));
  head.append(copyButton(() => code.textContent));
  return el("div", { class: "code" }, head, el("pre", {}, code));
}

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;

// Renders `text` into a fragment.
export function render(text) {
  const out = document.createDocumentFragment();
  const lines = text.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1;
      out.append(codeBlock(fence[2], body));
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      out.append(el(`h${Math.min(heading[1].length + 2, 6)}`, {}, inline(heading[2])));
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.append(el("hr"));
      i += 1;
      continue;
    }
    const list = line.match(BULLET) ? ["ul", BULLET] : line.match(NUMBERED) ? ["ol", NUMBERED] : null;
    if (list) {
      const node = el(list[0]);
      while (i < lines.length && list[1].test(lines[i])) {
        node.append(el("li", {}, inline(lines[i].match(list[1])[1])));
        i += 1;
      }
      out.append(node);
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].match(QUOTE)[1]);
      out.append(el("blockquote", {}, render(body.join("\n"))));
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) para.push(lines[i++]);
    if (!para.length) para.push(lines[i++]);
    out.append(el("p", {}, inline(para.join("\n"))));
  }
  return out;
}

function startsBlock(line) {
  return [FENCE, HEADING, BULLET, NUMBERED, QUOTE, RULE].some((re) => re.test(line));
}

// Inline spans, longest-first: `code`, **bold**, *italic* or _italic_, [text](address).
// Underscores only outside words (`snake_case` and `a.__b` stay as they are).
const INLINE = /(`+)([^`]+?)\1|\*\*([^*]+?)\*\*|(?<!\w)__([^_]+?)__(?!\w)|\*([^*\s][^*]*?)\*|(?<!\w)_([^_\s][^_]*?)_(?!\w)|\[([^\]]+)\]\(([^)\s]+)\)/g;

function inline(text) {
  const out = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    out.append(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[2] !== undefined) out.append(el("code", { text: m[2] }));
    else if (m[3] !== undefined) out.append(el("strong", {}, inline(m[3])));
    else if (m[4] !== undefined) out.append(el("strong", {}, inline(m[4])));
    else if (m[5] !== undefined) out.append(el("em", {}, inline(m[5])));
    else if (m[6] !== undefined) out.append(el("em", {}, inline(m[6])));
    else out.append(link(m[7], m[8]));
  }
  out.append(document.createTextNode(text.slice(last)));
  return out;
}

// A link only to an http(s) address (no `javascript:` or `data:`), opened without the opener.
function link(label, address) {
  let url = null;
  try {
    url = new URL(address);
  } catch (_) {
    // Not an absolute address: shown as text.
  }
  if (!url || !/^https?:$/.test(url.protocol)) {
    return document.createTextNode(`[${label}](${address})`);
  }
  return el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer nofollow" }, inline(label));
}
