// The Aerie demo page: an image, a chat about it over the OpenAI-compatible API (streamed), the tiling drawn
// over the image (POST /demo/tiles) and the time breakdown of every answer (the stream's usage chunk).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, image: null, imageSent: false, layout: null, messages: [], busy: false };

async function loadModel() {
  const response = await fetch("/v1/models");
  const card = (await response.json()).data[0];
  state.model = card.id;
  $("model").textContent = `${card.id} · ${card.family} · context ${card.max_model_len} tokens`;
}

// --- the image and its tiles -----------------------------------------------------------------------

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function setImage(dataURL) {
  state.image = dataURL;
  state.imageSent = false;
  state.layout = null;
  showImageHint();
  $("tiling").textContent = "tiling…";
  const response = await fetch("/demo/tiles", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ image: dataURL }),
  });
  const body = await response.json();
  if (!response.ok) {
    state.image = null;
    $("tiling").textContent = `refused: ${body.error.message}`;
    showImageHint();
    draw();
    return;
  }
  state.layout = body;
  $("tiling").textContent = `${body.width}×${body.height} px: ${body.summary}`;
  $("tiling").dataset.ready = "true";
  await draw();
}

function loadImageElement(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = src;
  });
}

async function draw() {
  const canvas = $("canvas");
  if (!state.image || !state.layout) {
    canvas.style.display = "none";
    $("placeholder").style.display = "";
    return;
  }
  const img = await loadImageElement(state.image);
  const layout = state.layout;
  const tiles = $("show-tiles").checked;
  // The canvas covers the image and, for padded layouts, the square around it; a thumbnail tile goes to the
  // right of the image, a square half the image's shorter side, the whole image squeezed into it.
  const box = layout.grid ? layout.grid.box : [0, 0, layout.width, layout.height];
  const thumbnail = tiles && layout.thumbnail ? Math.min(layout.width, layout.height) / 2 : 0;
  const left = Math.min(0, box[0]), top = Math.min(0, box[1]);
  const right = Math.max(layout.width, box[2]) + (thumbnail ? thumbnail * 1.15 : 0);
  const bottom = Math.max(layout.height, box[3]);
  const scale = Math.min(1, 960 / (right - left)) * Math.max(1, 240 / (bottom - top));
  canvas.width = Math.round((right - left) * scale);
  canvas.height = Math.round((bottom - top) * scale);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(scale, 0, 0, scale, -left * scale, -top * scale);
  ctx.clearRect(left, top, right - left, bottom - top);
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(img, 0, 0, layout.width, layout.height);
  if (tiles) drawTiles(ctx, layout, scale);
  delete canvas.dataset.thumbnail;
  if (thumbnail) {
    const x = right - thumbnail;
    drawThumbnail(ctx, img, layout, x, thumbnail, scale);
    // Where it landed, in canvas pixels: for tests and for anyone reading the page's state.
    canvas.dataset.thumbnail = [x - left, -top, thumbnail, thumbnail].map((v) => Math.round(v * scale)).join(",");
  }
  canvas.style.display = "block";
  $("placeholder").style.display = "none";
}

const TILE_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];

function drawTiles(ctx, layout, scale) {
  ctx.lineWidth = 2 / scale;
  ctx.font = `${Math.max(11, 13 / scale)}px system-ui, sans-serif`;
  layout.tiles.forEach(([l, t, r, b], i) => {
    const colour = TILE_COLOURS[i % TILE_COLOURS.length];
    ctx.fillStyle = colour + "22";
    ctx.fillRect(l, t, r - l, b - t);
    ctx.strokeStyle = colour;
    ctx.strokeRect(l + 1 / scale, t + 1 / scale, r - l - 2 / scale, b - t - 2 / scale);
    ctx.fillStyle = colour;
    ctx.fillText(`${i + 1}`, l + 5 / scale, t + 16 / scale);
  });
  if (layout.grid) {
    const { cols, rows, box: [l, t, r, b] } = layout.grid;
    ctx.strokeStyle = "rgba(47, 111, 214, 0.55)";
    ctx.lineWidth = 1 / scale;
    ctx.beginPath();
    for (let c = 0; c <= cols; c++) { const x = l + ((r - l) * c) / cols; ctx.moveTo(x, t); ctx.lineTo(x, b); }
    for (let k = 0; k <= rows; k++) { const y = t + ((b - t) * k) / rows; ctx.moveTo(l, y); ctx.lineTo(r, y); }
    ctx.stroke();
  }
}

function drawThumbnail(ctx, img, layout, x, side, scale) {
  const colour = TILE_COLOURS[layout.tiles.length % TILE_COLOURS.length];
  ctx.drawImage(img, x, 0, side, side);
  ctx.lineWidth = 2 / scale;
  ctx.strokeStyle = colour;
  ctx.strokeRect(x + 1 / scale, 1 / scale, side - 2 / scale, side - 2 / scale);
  ctx.fillStyle = colour;
  ctx.font = `${Math.max(11, 13 / scale)}px system-ui, sans-serif`;
  ctx.fillText(`${layout.tiles.length + 1} thumbnail`, x + 5 / scale, side + 16 / scale);
}

// --- the chat --------------------------------------------------------------------------------------

// Says whether the next question goes with an image: the page never sends one silently without.
function showImageHint() {
  $("image-hint").textContent = state.image && !state.imageSent ? "The image goes with your next question."
    : state.imageSent ? "Follow-up: the model still sees the image sent earlier in this chat."
    : "No image: the question goes without one. Upload an image or use the example to ask about a picture.";
}

function bubble(kind, text, image, note) {
  const div = document.createElement("div");
  div.className = `message ${kind}`;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    div.appendChild(img);
  }
  if (note) {
    const small = document.createElement("small");
    small.className = "note";
    small.textContent = note;
    div.appendChild(small);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return span;
}

function tokenCount(n) {
  return n === 1 ? "1 token" : `${n} tokens`;
}

function showTimings(usage, timings, seconds) {
  const rows = [
    ["preprocess", `${(timings.preprocess_s * 1000).toFixed(0)} ms`],
    ["vision", `${(timings.vision_s * 1000).toFixed(0)} ms`],
    ["prefill", `${(timings.prefill_s * 1000).toFixed(0)} ms (${tokenCount(usage.prompt_tokens)})`],
    ["decode", `${(timings.decode_s * 1000).toFixed(0)} ms (${tokenCount(usage.completion_tokens)}, ` +
               // the first token comes from prefill: a one-token answer has no decode step to rate
               `${usage.completion_tokens > 1 ? timings.decode_tokens_per_s.toFixed(1) + " tok/s" : "no decode step"})`],
    ["first token", `${(timings.time_to_first_token_s * 1000).toFixed(0)} ms`],
    ["total (browser)", `${(seconds * 1000).toFixed(0)} ms`],
  ];
  const div = document.createElement("div");
  div.className = "timings";
  div.innerHTML = "<table>" + rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("") + "</table>";
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
}

async function ask(question) {
  const content = [];
  const attach = state.image && !state.imageSent;
  if (attach) content.push({ type: "image_url", image_url: { url: state.image } });
  content.push({ type: "text", text: question });
  const message = { role: "user", content };
  bubble("user", question, attach ? state.image : null, attach || state.imageSent ? null : "without an image");
  const answer = bubble("assistant", "");
  answer.parentElement.dataset.done = "false";
  const started = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      model: state.model, messages: [...state.messages, message], stream: true,
      stream_options: { include_usage: true },
      max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value),
    }),
  });
  if (!response.ok) {
    const body = await response.json();
    answer.parentElement.className = "message error";
    answer.textContent = body.error.message;
    answer.parentElement.dataset.done = "error";
    return;
  }
  let text = "", failed = null, usage = null, timings = null;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) { failed = chunk.error.message; continue; }
      if (chunk.usage) { usage = chunk.usage; timings = chunk.timings; }
      const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
      if (delta) {
        text += delta;
        answer.textContent = text;
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    }
  }
  if (failed) {
    answer.parentElement.className = "message error";
    answer.textContent = text + (text ? "\n" : "") + failed;
    answer.parentElement.dataset.done = "error";
    return;
  }
  state.messages.push(message, { role: "assistant", content: text });
  if (attach) state.imageSent = true;
  showImageHint();
  answer.parentElement.dataset.done = "true";
  if (usage && timings) showTimings(usage, timings, (performance.now() - started) / 1000);
}

// --- wiring ----------------------------------------------------------------------------------------

$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (file) await setImage(await readAsDataURL(file));
});
$("example").addEventListener("click", async () => {
  const blob = await (await fetch("/demo/example.png")).blob();
  await setImage(await readAsDataURL(blob));
});
$("show-tiles").addEventListener("change", draw);
$("reset").addEventListener("click", () => {
  state.messages = [];
  state.imageSent = false;
  $("messages").innerHTML = "";
  showImageHint();
});
$("ask").addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.busy) return;
  state.busy = true;
  $("send").disabled = true;
  try {
    await ask(question);
  } catch (error) {
    bubble("error", `the request failed: ${error}`);
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
});
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("send").click(); }
});
showImageHint();
loadModel().catch((error) => { $("model").textContent = `server unreachable: ${error}`; });
