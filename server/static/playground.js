// The d2f-serve playground: streams chat completions with stream_options.include_steps and draws every
// forward as it happens. Model text reaches the page only through textContent, never as HTML, and the
// API key lives only in the key field and the Authorization header of this page's own requests.

const PRESETS = { quality: 0, balanced: 0.5, fast: 1 };
const STEP_PREFIX = ": step ";

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function headers() {
  const out = { "Content-Type": "application/json" };
  const key = $("#api-key").value.trim();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

// Whitespace a slot would otherwise hide.
function visible(text) {
  if (text === "") return "∅";
  return text.replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

// One colour per forward; the golden angle keeps consecutive forwards far apart on the wheel.
function colour(forward) {
  return `hsl(${(forward * 137.508) % 360} 70% 80%)`;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") return body.error.message;
  } catch (_) { /* not JSON: fall through */ }
  return `HTTP ${response.status}`;
}

// Split an SSE body into frames as it arrives; the step stream's events are comment frames.
async function* frames(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      yield buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
    }
  }
}

class Pane {
  constructor(name, preset) {
    this.root = $("#pane-template").content.firstElementChild.cloneNode(true);
    this.root.id = `pane-${name}`;
    this.root.dataset.pane = name;
    $(".pane-title", this.root).textContent = `Run ${name.toUpperCase()}`;
    this.slotsBox = $(".slots", this.root);
    this.answerBox = $(".answer", this.root);
    for (const button of this.root.querySelectorAll("[data-preset]")) {
      button.addEventListener("click", () => this.preset(button.dataset.preset));
    }
    this.knob("speed").addEventListener("input", () => this.showSpeed());
    this.preset(preset);
  }

  knob(name) {
    return $(`[data-knob="${name}"]`, this.root);
  }

  showSpeed() {
    $('[data-show="speed"]', this.root).textContent = Number(this.knob("speed").value).toFixed(2);
  }

  preset(name) {
    if (name === "ar") {
      this.knob("block_size").value = "1";
    } else {
      this.knob("speed").value = String(PRESETS[name]);
      if (this.knob("block_size").value === "1") this.knob("block_size").value = "";
    }
    for (const button of this.root.querySelectorAll("[data-preset]")) {
      button.classList.toggle("chosen", button.dataset.preset === name);
    }
    this.showSpeed();
  }

  body(messages) {
    const body = {
      messages,
      max_tokens: Number(this.knob("max_tokens").value) || 128,
      temperature: Number(this.knob("temperature").value) || 0,
      speed: Number(this.knob("speed").value),
      stream: true,
      stream_options: { include_usage: true, include_steps: true },
    };
    const block = this.knob("block_size").value.trim();
    if (block) body.block_size = Number(block);
    return body;
  }

  figure(name, value) {
    $(`[data-figure="${name}"]`, this.root).textContent = value;
  }

  reset() {
    this.slotsBox.replaceChildren();
    this.answerBox.textContent = "";
    this.slots = new Map();
    this.text = "";
    this.forwards = 0;
    this.committed = 0;
    this.started = performance.now();
    this.firstBlock = null;
    this.usage = null;
    this.finish = null;
    for (const name of ["forwards", "per_forward", "tok_s", "first_block", "status"]) this.figure(name, "");
    this.figure("forwards", "0");
    delete this.root.dataset.usageForwards;
    delete this.root.dataset.completionTokens;
    this.root.dataset.forwards = "0";
  }

  setStatus(status, message) {
    this.root.dataset.status = status;
    this.figure("status", message);
  }

  // A block's slots appear, masked, the first time a forward decodes it.
  ensureBlock(start, end) {
    if (this.slots.has(start)) return;
    const block = el("div", "block");
    block.dataset.start = start;
    block.dataset.end = end;
    for (let pos = start; pos < end; pos++) {
      const slot = el("span", "slot", "·");
      slot.dataset.pos = pos;
      slot.dataset.state = "masked";
      block.append(slot);
      this.slots.set(pos, slot);
    }
    this.slotsBox.append(block);
  }

  onStep(step) {
    this.forwards = step.forward;
    for (const [start, end] of step.blocks) this.ensureBlock(start, end);
    for (const draft of step.proposed || []) {
      const slot = this.slots.get(draft.pos);
      if (slot && slot.dataset.state !== "committed") {
        slot.dataset.state = "draft";
        slot.textContent = visible(draft.text);
      }
    }
    for (const draft of step.rejected || []) {
      const slot = this.slots.get(draft.pos);
      if (!slot) continue;
      slot.dataset.state = "masked";
      slot.textContent = "·";
      slot.prepend(el("s", "rejected", visible(draft.text)));
    }
    for (const token of step.committed) {
      const slot = this.slots.get(token.pos);
      if (!slot) continue;
      slot.dataset.state = "committed";
      slot.dataset.id = token.id;
      slot.dataset.forward = step.forward;
      slot.dataset.text = token.text;
      slot.title = `forward ${step.forward} · token ${token.id}`;
      slot.textContent = visible(token.text);
      slot.style.backgroundColor = colour(step.forward);
    }
    this.committed += step.committed.length;
    const seconds = (performance.now() - this.started) / 1000;
    this.root.dataset.forwards = String(this.forwards);
    this.figure("forwards", String(this.forwards));
    this.figure("per_forward", (this.committed / this.forwards).toFixed(2));
    this.figure("tok_s", seconds > 0 ? (this.committed / seconds).toFixed(1) : "–");
  }

  onChunk(chunk) {
    if (chunk.usage) {
      this.usage = chunk.usage;
      this.root.dataset.usageForwards = String(chunk.usage.forwards);
      this.root.dataset.completionTokens = String(chunk.usage.completion_tokens);
    }
    for (const choice of chunk.choices || []) {
      const piece = (choice.delta && choice.delta.content) || "";
      if (piece && this.firstBlock === null) {
        this.firstBlock = performance.now() - this.started;
        this.figure("first_block", `${Math.round(this.firstBlock)} ms`);
      }
      this.text += piece;
      this.answerBox.textContent = this.text;
      if (choice.finish_reason) this.finish = choice.finish_reason;
    }
  }

  async run(messages, signal, onText) {
    this.reset();
    const body = this.body(messages);
    this.root.dataset.request = JSON.stringify(body);
    this.setStatus("running", "decoding…");
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal,
      });
      if (!response.ok) {
        this.setStatus("error", await errorMessage(response));
        return null;
      }
      for await (const frame of frames(response)) {
        if (frame.startsWith(STEP_PREFIX)) {
          this.onStep(JSON.parse(frame.slice(STEP_PREFIX.length)));
        } else if (frame.startsWith("data: ")) {
          const data = frame.slice(6);
          if (data === "[DONE]") break;
          const chunk = JSON.parse(data);
          if (chunk.error) {
            this.setStatus("error", chunk.error.message);
            return null;
          }
          this.onChunk(chunk);
          onText(this.text);
        }
      }
    } catch (error) {
      this.setStatus("error", signal.aborted ? "stopped" : String(error));
      return null;
    }
    const usage = this.usage;
    if (usage && usage.forwards) {
      this.figure("per_forward", (usage.completion_tokens / usage.forwards).toFixed(2));
    }
    const seconds = ((performance.now() - this.started) / 1000).toFixed(2);
    this.setStatus("done", `${this.finish || "done"} · ${usage ? usage.completion_tokens : "?"} tokens in ` +
      `${usage ? usage.forwards : this.forwards} forwards, ${seconds} s`);
    return this.text;
  }
}

class Playground {
  constructor() {
    this.history = [];
    this.panes = [new Pane("a", "balanced"), new Pane("b", "ar")];
    $("#panes").append(...this.panes.map((p) => p.root));
    this.showCompare();
    $("#compare").addEventListener("change", () => this.showCompare());
    $("#ask").addEventListener("submit", (event) => { event.preventDefault(); this.send(); });
    $("#prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); this.send(); }
    });
    $("#stop").addEventListener("click", () => this.controller && this.controller.abort());
    $("#clear").addEventListener("click", () => { this.history = []; $("#history").replaceChildren(); });
    $("#api-key").addEventListener("change", () => this.loadModel());
    this.loadModel();
  }

  showCompare() {
    this.panes[1].root.hidden = !$("#compare").checked;
  }

  async loadModel() {
    const label = $("#model");
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      if (response.status === 401) {
        label.textContent = "model: enter the API key";
        return;
      }
      const models = await response.json();
      label.textContent = `model: ${models.data[0].id}`;
    } catch (_) {
      label.textContent = "model: server not reachable";
    }
  }

  bubble(role, text) {
    const item = el("li", role, text);
    $("#history").append(item);
    item.scrollIntoView({ block: "nearest" });
    return item;
  }

  async send() {
    const prompt = $("#prompt").value.trim();
    if (!prompt || this.controller) return;
    const messages = [...this.history, { role: "user", content: prompt }];
    this.bubble("user", prompt);
    const answer = this.bubble("assistant", "");
    $("#prompt").value = "";
    this.controller = new AbortController();
    $("#send").disabled = true;
    $("#stop").disabled = false;
    const active = $("#compare").checked ? this.panes : this.panes.slice(0, 1);
    const runs = active.map((pane, i) => pane.run(messages, this.controller.signal,
      i === 0 ? (text) => { answer.textContent = text; } : () => {}));
    const [text] = await Promise.all(runs);
    if (text === null) {
      answer.classList.add("failed");
      answer.textContent = "(no answer: see the run's status)";
    } else {
      this.history = [...messages, { role: "assistant", content: text }];
    }
    this.controller = null;
    $("#send").disabled = false;
    $("#stop").disabled = true;
  }
}

new Playground();
