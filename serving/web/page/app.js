// The chat page: loads the model with a progress bar, keeps the conversation, streams replies,
// and exposes the JavaScript API programs and tests use:
//   window.mlzero.ready                     true once the model is loaded
//   await window.mlzero.chat(messages, {maxTokens, temperature})  ->  {text, tokens, seconds}

import { LIMITS, Runtime } from "./runtime.js";

const $ = (id) => document.getElementById(id);
const conversation = [];  // the conversation: [{role, content}], the system prompt kept apart
let busy = false;

const loading = Runtime.load((loaded, total) => {
  $("progress").max = total || 1;
  $("progress").value = loaded;
  $("status").textContent = `Downloading the model: ${(loaded / 1e6).toFixed(1)} of ` +
                            `${(total / 1e6).toFixed(1)} MB`;
});

window.mlzero = {
  ready: false,
  error: null,
  timings: null,
  /** OpenAI-style messages in, {text, tokens, seconds} (and timing details) out. */
  chat: async (messages, options = {}) => (await loading).chat(messages, options),
  /** The prompt's token ids, as the page builds them (for tests of the chat template). */
  encode: async (messages) => (await loading).encoder.encode(messages),
};

loading.then((rt) => {
  Object.assign(window.mlzero, { ready: true, timings: rt.timings });
  $("model-name").textContent = rt.site.name;
  $("status").textContent = `Model loaded in ${rt.timings.loadSeconds.toFixed(2)} s ` +
    `(${rt.site.model.file}, runs in this browser, ${rt.timings.threads} thread(s)).`;
  $("progress").hidden = true;
  $("send").disabled = false;
}, (err) => {
  window.mlzero.error = String(err.message || err);
  $("progress").hidden = true;
  $("status").textContent = "The model could not be loaded.";
  showError(window.mlzero.error);
});

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function addBubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function checkMessage(text) {
  if (!text.trim()) return "Please type a message.";
  if (text.length > LIMITS.maxInputChars) {
    return `Your message has ${text.length} characters; the limit is ${LIMITS.maxInputChars}.`;
  }
  return null;
}

async function send(event) {
  event.preventDefault();
  if (busy || !window.mlzero.ready) return;
  const text = $("message").value;
  const notice = checkMessage(text);
  if (notice) return void addBubble("notice", notice);
  busy = $("send").disabled = true;
  $("message").value = "";
  addBubble("user", text);
  const bubble = addBubble("assistant", "…");
  const system = $("system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...conversation,
                    { role: "user", content: text }];
  try {
    const reply = await window.mlzero.chat(messages, {
      maxTokens: $("max-tokens").value, temperature: $("temperature").value,
      onText: (soFar) => { bubble.textContent = soFar; } });
    bubble.textContent = reply.text || "(the model returned an empty reply)";
    conversation.push({ role: "user", content: text }, { role: "assistant", content: reply.text });
    $("stats").textContent = `Last reply: ${reply.tokens} tokens in ${reply.seconds.toFixed(2)} ` +
      `s (${(reply.tokens / reply.seconds).toFixed(1)} tokens/s, first token after ` +
      `${(reply.firstTokenSeconds * 1000).toFixed(0)} ms)`;
  } catch (err) {
    bubble.className = "msg notice";
    bubble.textContent = String(err.message || err);
  } finally {
    busy = $("send").disabled = false;
  }
}

$("chat-form").addEventListener("submit", send);
$("message").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) send(e);
});
$("clear").addEventListener("click", () => {
  conversation.length = 0;
  $("log").replaceChildren();
  $("stats").textContent = "";
});
