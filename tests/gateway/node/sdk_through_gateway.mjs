// The official Node SDK (`openai` from npm) through the Ferryman gateway, run by tests/gateway/test_node_sdk.py.
//
//   OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 OPENAI_API_KEY=fm-… node sdk_through_gateway.mjs [area ...]
//
// Areas: chat, chat_stream, responses_stream, embeddings, files_batches, auth_error (default: all but
// auth_error, which expects OPENAI_API_KEY to be a key the gateway refuses). Prints one JSON object per
// check on stdout ({"check": "...", "ok": true, ...}); on any failure it prints {"ok": false} for that
// check, the error message (keys redacted) on stderr, and exits 1. The SDK's own retries are off.

import OpenAI, { toFile } from "openai";

const KEY_LIKE = /(?<![A-Za-z])(?:sk|fm)-[A-Za-z0-9_-]{4,}/g;
const apiKey = process.env.OPENAI_API_KEY ?? "";
const baseURL = process.env.OPENAI_BASE_URL;
const MESSAGES = [{ role: "user", content: "Say hello." }];

let failed = false;

function redact(text) {
  let out = String(text);
  if (apiKey) out = out.split(apiKey).join("[REDACTED]");
  return out.replace(KEY_LIKE, "[REDACTED]");
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

function report(check, details = {}) {
  console.log(JSON.stringify({ check, ok: true, ...details }));
}

async function run(check, body) {
  try {
    report(check, (await body()) ?? {});
  } catch (error) {
    failed = true;
    const name = error?.constructor?.name ?? "Error";
    console.log(JSON.stringify({ check, ok: false, error: name }));
    console.error(`${check}: ${name}: ${redact(error?.message ?? error)}`);
  }
}

const areas = {
  async chat() {
    await run("chat", async () => {
      const reply = await client.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES });
      expect(reply.choices[0]?.message?.content, "the reply has no text");
      expect(reply.usage?.total_tokens > 0, "the reply has no usage");
      return { total_tokens: reply.usage.total_tokens };
    });
  },

  async chat_stream() {
    await run("chat_stream", async () => {
      const stream = await client.chat.completions.create({
        model: "gpt-4o-mini",
        messages: MESSAGES,
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
      const last = chunks.at(-1);
      expect(chunks.length > 1, `expected several chunks, got ${chunks.length}`);
      expect(text, "the stream carried no text");
      expect(last?.usage?.completion_tokens > 0, "the last chunk has no usage");
      return { chunks: chunks.length, completion_tokens: last.usage.completion_tokens };
    });
  },

  async responses_stream() {
    await run("responses_stream", async () => {
      const stream = client.responses.stream({ model: "gpt-4o-mini", input: "Write a haiku." });
      const events = [];
      for await (const event of stream) events.push(event.type);
      const final = await stream.finalResponse();
      expect(events[0] === "response.created", `first event is ${events[0]}`);
      expect(events.at(-1) === "response.completed", `last event is ${events.at(-1)}`);
      expect(final.output_text, "the final response has no text");
      const stored = await client.responses.retrieve(final.id);
      expect(stored.id === final.id, "the stored response has another id");
      return { events: events.length, first: events[0], last: events.at(-1), text_chars: final.output_text.length };
    });
  },

  async embeddings() {
    await run("embeddings", async () => {
      const result = await client.embeddings.create({ model: "text-embedding-3-small", input: ["a", "b"] });
      expect(result.data.length === 2, `expected 2 vectors, got ${result.data.length}`);
      const dims = result.data.map((d) => d.embedding.length);
      expect(dims.every((n) => n === 1536), `dimensions ${dims}`);
      return { vectors: result.data.length, dimensions: dims[0] };
    });
  },

  async files_batches() {
    const lines = [0, 1, 2].map((i) =>
      JSON.stringify({
        custom_id: `r${i}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: { model: "gpt-4o-mini", messages: MESSAGES },
      }),
    );
    const data = Buffer.from(lines.join("\n"));
    let fileId;
    let batchId;
    await run("files.create", async () => {
      const uploaded = await client.files.create({ file: await toFile(data, "in.jsonl"), purpose: "batch" });
      expect(uploaded.id, "the upload has no id");
      fileId = uploaded.id;
      return { bytes: uploaded.bytes };
    });
    await run("files.retrieve", async () => {
      const file = await client.files.retrieve(fileId);
      expect(file.id === fileId, "another file came back");
      expect(file.bytes === data.length, `bytes ${file.bytes}, sent ${data.length}`);
      return { bytes: file.bytes, purpose: file.purpose };
    });
    await run("files.content", async () => {
      const content = Buffer.from(await (await client.files.content(fileId)).arrayBuffer());
      expect(content.equals(data), "the content differs from what was uploaded");
      return { bytes: content.length };
    });
    await run("batches.create", async () => {
      const batch = await client.batches.create({
        input_file_id: fileId,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
      });
      expect(batch.input_file_id === fileId, "the batch names another input file");
      batchId = batch.id;
      return { status: batch.status };
    });
    await run("batches.retrieve", async () => {
      const batch = await client.batches.retrieve(batchId);
      expect(batch.id === batchId, "another batch came back");
      return { status: batch.status };
    });
    await run("batches.list", async () => {
      const ids = [];
      for await (const batch of client.batches.list()) ids.push(batch.id);
      expect(ids.length === 1 && ids[0] === batchId, `listed ${ids.length} batches, not just this key's one`);
      const files = [];
      for await (const file of client.files.list()) files.push(file.id);
      expect(files.length === 1 && files[0] === fileId, `listed ${files.length} files, not just this key's one`);
      return { batches: ids.length, files: files.length };
    });
  },

  async auth_error() {
    await run("auth_error", async () => {
      let caught;
      try {
        await client.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES });
      } catch (error) {
        caught = error;
      }
      expect(caught, "the call succeeded with a key the gateway should refuse");
      if (!(caught instanceof OpenAI.AuthenticationError)) throw caught;
      return {
        error: caught.constructor.name,
        status: caught.status,
        code: caught.code,
        type: caught.type,
        key_in_message: Boolean(apiKey) && caught.message.includes(apiKey),
      };
    });
  },
};

const requested = process.argv.slice(2);
const selected = requested.length ? requested : Object.keys(areas).filter((a) => a !== "auth_error");
const unknown = selected.filter((a) => !(a in areas));
if (unknown.length) {
  console.error(`unknown area(s): ${unknown.join(", ")}; known: ${Object.keys(areas).join(", ")}`);
  process.exit(2);
}
if (!apiKey || !baseURL) {
  console.error("set OPENAI_BASE_URL (the gateway's /v1 URL) and OPENAI_API_KEY (a virtual key)");
  process.exit(2);
}
const client = new OpenAI({ apiKey, baseURL, maxRetries: 0, timeout: 20_000 });
for (const area of selected) await areas[area]();
process.exit(failed ? 1 : 0);
