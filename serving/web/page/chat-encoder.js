// A conversation's prompt token ids, in the page: the model's own Jinja chat template, with
// every message's text tokenized as plain text. The same rule as serving/backend.py ChatEncoder
// (tested to give the same ids): the template is rendered once with a sentinel in place of each
// message's content, which shows where the template itself writes special tokens; only those
// become control tokens, so a user who types "<|im_end|>" gets the characters, not a new turn.

import { Template } from "./vendor/jinja.js";

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

export class ChatEncoder {
  /** `plainIds(text)` resolves to the token ids of `text` with special tokens read as plain
   * text (llama.cpp's tokenizer with parse_special off); `site.special_tokens` maps each special
   * token's text to its id. */
  constructor(plainIds, site) {
    this.plainIds = async (text) => (text ? plainIds(text) : []);
    this.specialIds = new Map(Object.entries(site.special_tokens));
    // leftmost, longest first: how `tokenizers` matches added tokens
    const alternatives = [...this.specialIds.keys()].sort((a, b) => b.length - a.length);
    this.specialRe = alternatives.length
      ? new RegExp(alternatives.map(escapeRe).join("|"), "g") : null;
    this.template = new Template(site.chat_template);
    this.templateVars = site.template_vars || {};
  }

  render(messages, addGenerationPrompt) {
    return this.template.render({ ...this.templateVars, messages,
                                  add_generation_prompt: addGenerationPrompt });
  }

  /** Token ids of `messages` ([{role, content}]) followed by the assistant's turn. */
  async encode(messages, addGenerationPrompt = true) {
    const sentinels = messages.map((_, i) => `\u2063MLZ${i}\u2063`);
    const skeleton = this.render(messages.map((m, i) => ({ ...m, content: sentinels[i] })),
                                 addGenerationPrompt);
    // one pass, so content that happens to contain a sentinel is never substituted again
    const fill = (s) => s.replace(/\u2063MLZ(\d+)\u2063/g, (_, i) => messages[Number(i)].content);
    if (fill(skeleton) !== this.render(messages, addGenerationPrompt)) {
      throw new Error("the chat template changes message text; it cannot be encoded with " +
                      "content kept apart from control tokens");
    }
    const ids = [];
    let pos = 0;
    for (const m of this.specialRe ? skeleton.matchAll(this.specialRe) : []) {
      ids.push(...await this.plainIds(fill(skeleton.slice(pos, m.index))),
               this.specialIds.get(m[0]));
      pos = m.index + m[0].length;
    }
    ids.push(...await this.plainIds(fill(skeleton.slice(pos))));
    return ids;
  }
}

/** The messages that fit `budget` tokens, as the server trims them (serving/chat.py
 * fit_context): oldest turns dropped first, a leading system message kept, the prompt starting
 * at a user turn. Returns {messages, ids}, or null when the last user turn alone is too long. */
export async function fitContext(encoder, messages, budget) {
  const system = messages.length && messages[0].role === "system" ? messages.slice(0, 1) : [];
  let turns = messages.slice(system.length);
  while (turns.length) {
    const ids = await encoder.encode([...system, ...turns]);
    if (ids.length <= budget) return { messages: [...system, ...turns], ids };
    const next = turns.findIndex((m, j) => j > 0 && m.role === "user");
    if (next < 0) return null;
    turns = turns.slice(next);
  }
  return null;
}
