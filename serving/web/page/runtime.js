// The model in the page: download the GGUF file once (checked against the SHA-256 the builder
// recorded), run it with llama.cpp compiled to WebAssembly (wllama), generate from token ids.
// Nothing is fetched from any host but the one serving the site.

import { Wllama } from "./vendor/wllama/index.js";
import { ChatEncoder, fitContext } from "./chat-encoder.js";

// The same caps as the chat app (serving/chat.py Limits).
export const LIMITS = { maxInputChars: 2000, maxNewTokens: 256, defaultNewTokens: 64,
                        maxTemperature: 2.0 };
const CACHE = "mlzero-models";

async function fetchJson(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`could not download ${url}: HTTP ${res.status}`);
  return res.json();
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchWithProgress(url, total, onProgress) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`could not download ${url}: HTTP ${res.status}`);
  const reader = res.body.getReader();
  const parts = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.byteLength;
    onProgress(loaded, total);
  }
  return new Blob(parts);
}

/** The model file as a Blob: from the browser's cache after the first visit, else downloaded.
 * A file whose size or checksum is not the one the site was built with is refused. */
async function modelBlob(model, onProgress) {
  const url = new URL(model.file, location.href).href;
  // The Cache API and crypto.subtle exist in secure contexts only (https, localhost).
  const cache = globalThis.caches ? await caches.open(CACHE).catch(() => null) : null;
  const key = `${url}?sha256=${model.sha256}`;
  const hit = cache && await cache.match(key);
  if (hit) {
    const blob = await hit.blob();
    onProgress(blob.size, blob.size);
    if (blob.size === model.bytes) return blob;
  }
  const blob = await fetchWithProgress(url, model.bytes, onProgress);
  if (blob.size !== model.bytes) {
    throw new Error(`the model file ${model.file} is incomplete or corrupt: ${blob.size} bytes, ` +
                    `expected ${model.bytes}; rebuild the site (python -m serving.web)`);
  }
  if (globalThis.crypto?.subtle && await sha256Hex(await blob.arrayBuffer()) !== model.sha256) {
    throw new Error(`the model file ${model.file} is corrupt (its SHA-256 is not the one the ` +
                    "site was built with); rebuild the site (python -m serving.web)");
  }
  if (cache) await cache.put(key, new Response(blob)).catch(() => {});  // full storage: no cache
  return blob;
}

const WASM = {
  "single-thread/wllama.wasm": "vendor/wllama/single-thread/wllama.wasm",
  // used only where the page is cross-origin isolated (COOP/COEP headers); else one thread
  "multi-thread/wllama.wasm": "vendor/wllama/multi-thread/wllama.wasm",
};

export class Runtime {
  static async load(onProgress) {
    const t0 = performance.now();
    const site = await fetchJson("site.json");
    const blob = await modelBlob(site.model, onProgress);
    const downloaded = performance.now();
    const wllama = new Wllama(WASM, { suppressNativeLog: true, logger: quietLogger() });
    try {
      // As the server's gguf backend: f32 KV cache, no flash attention, the same context.
      await wllama.loadModel([blob], { n_ctx: site.context, cache_type_k: "f32",
                                       cache_type_v: "f32", flash_attn: false });
    } catch (err) {
      throw new Error(`llama.cpp could not load ${site.model.file} (is it a GGUF file?): ` +
                      `${err.message || err}`);
    }
    const encoder = new ChatEncoder((text) => wllama.tokenize(text, false), site);
    const rt = new Runtime(site, encoder, wllama);
    rt.timings = { downloadSeconds: (downloaded - t0) / 1000,
                   loadSeconds: (performance.now() - t0) / 1000,
                   threads: wllama.getNumThreads() };
    return rt;
  }

  constructor(site, encoder, wllama) {
    this.site = site;
    this.encoder = encoder;
    this.wllama = wllama;
  }

  /** The reply to OpenAI-style `messages`: {text, tokens, seconds, firstTokenSeconds, ids,
   * promptTokens, keptMessages}. Greedy unless temperature > 0; `onText(textSoFar)` streams;
   * `ignoreEos` generates exactly maxTokens (for benchmarks, as llama.cpp's ignore_eos). */
  async chat(messages, { maxTokens, temperature, onText, ignoreEos = false } = {}) {
    const n = Math.min(Math.max(1, Math.floor(Number(maxTokens) || LIMITS.defaultNewTokens)),
                       LIMITS.maxNewTokens);
    const temp = Math.min(Math.max(0, Number(temperature) || 0), LIMITS.maxTemperature);
    const fitted = await fitContext(this.encoder, messages, this.site.context - n);
    if (!fitted) {
      throw new Error(`the message does not fit the model's ${this.site.context}-token context ` +
                      `with ${n} new tokens; shorten it or lower max tokens`);
    }
    const start = performance.now();
    let first = null;
    const ids = await this.generate(fitted.ids, n, temp, ignoreEos, (text) => {
      first ??= (performance.now() - start) / 1000;
      onText?.(text);
    });
    const seconds = (performance.now() - start) / 1000;
    return { text: decodeUtf8(ids.bytes), tokens: ids.length, seconds, ids: [...ids],
             firstTokenSeconds: first ?? seconds, promptTokens: fitted.ids.length,
             keptMessages: fitted.messages.length };
  }

  /** Token by token, as llama.cpp's server does it: prompt in one batch, then sample, stop at
   * an end-of-generation token or after n tokens. Returns the ids (with .bytes, their text). */
  async generate(promptIds, n, temp, ignoreEos, onText) {
    const w = this.wllama;
    const control = new Set(Object.values(this.site.special_tokens));
    await w.kvClear();
    // temp 0 is greedy; else the server's settings for our requests: no top-k/top-p/min-p cut,
    // no repetition penalties. Nothing then reads the sampler's history, so tokens are not fed
    // to it (samplingAccept): one round trip to the worker less per token.
    await w.samplingInit({ temp, top_k: 0, top_p: 1.0, min_p: 0.0, penalty_repeat: 1.0,
                           penalty_freq: 0.0, penalty_present: 0.0 });
    await w.decode(promptIds, {});
    const out = [];
    out.bytes = new Uint8Array();
    let sampled = w.samplingSample();
    while (out.length < n) {
      const { token, piece } = await sampled;
      if (w.isTokenEOG(token) && !ignoreEos) break;
      out.push(token);
      // the server shows no text for a control token the model writes mid-reply
      if (!control.has(token)) out.bytes = joinBytes(out.bytes, piece);
      onText(decodeUtf8(out.bytes));
      if (out.length === n) break;
      // Both posted at once: the worker runs its messages in order, so one round trip to it
      // per token instead of two.
      const decoded = w.decode([token], {});
      sampled = w.samplingSample();
      await decoded;
    }
    return out;
  }
}

function joinBytes(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** The text of `bytes` without a multi-byte character cut off at the end: held back while
 * streaming, and dropped at the end of a reply, as llama.cpp's server does (validate_utf8). */
function decodeUtf8(bytes) {
  let end = bytes.length;
  for (let i = 1; i <= 4 && i <= bytes.length; i++) {
    const c = bytes[bytes.length - i];
    const need = (c & 0xe0) === 0xc0 ? 2 : (c & 0xf0) === 0xe0 ? 3 : (c & 0xf8) === 0xf0 ? 4 : 0;
    if (need > i) {
      end = bytes.length - i;
      break;
    }
  }
  return new TextDecoder().decode(bytes.subarray(0, end));
}

function quietLogger() {
  const noop = () => {};
  return { debug: noop, log: noop, warn: console.warn, error: console.error };
}
