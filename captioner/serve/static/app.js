// The captioner page: upload or drop an image, show the caption with each word's attention, answer questions.
// Talks to the same TF Serving-style API as any client (POST /v1/models/NAME:predict); loads nothing from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { b64: null, image: null, words: [], attention: [], locked: -1, answerAttention: null,
                models: {}, upload: 0 };
// models: name -> {image_size, resize_policy, ...} from /v1/models/NAME/metadata; upload counts the pictures chosen,
// so an answer that arrives after another picture was chosen is dropped.

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function predict(model, instances) {
  let response;
  try {
    response = await fetch(`/v1/models/${model}:predict`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ instances }),
    });
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message}); is captioner serve still running?`);
  }
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON: use the status below */ }
  if (!response.ok) throw new Error((body && body.error) || `the server answered HTTP ${response.status}`);
  return body.predictions[0];
}

// The part of the picture the model's input covers, in canvas pixels: the whole picture for "stretch", the middle
// for "center_crop", a box reaching past the picture for "pad" (its black borders). The attention grid maps onto it.
function modelRegion(canvas, model) {
  const info = state.models[model] || {};
  const [th, tw] = info.image_size || [1, 1];
  const policy = info.resize_policy || "stretch";
  const W = canvas.width, H = canvas.height, target = tw / th, actual = W / H;
  if (policy === "center_crop") {
    return actual > target ? [(W - H * target) / 2, 0, H * target, H] : [0, (H - W / target) / 2, W, W / target];
  }
  if (policy === "pad") {
    return actual > target ? [0, (H - W / target) / 2, W, W / target] : [(W - H * target) / 2, 0, H * target, H];
  }
  return [0, 0, W, H];
}

// Draws the picture (its own aspect ratio, at most 320 pixels a side) and, when `grid` (rows of attention weights)
// is given, darkens the places the model did not look at: brightness follows the weight, scaled so the strongest
// cell is fully lit.
function draw(canvas, grid, model) {
  const ctx = canvas.getContext("2d");
  canvas.hidden = !state.image;
  if (!state.image) return;
  const scale = 320 / Math.max(state.image.naturalWidth, state.image.naturalHeight);
  canvas.width = Math.max(1, Math.round(state.image.naturalWidth * scale));
  canvas.height = Math.max(1, Math.round(state.image.naturalHeight * scale));
  ctx.imageSmoothingEnabled = scale < 2;  // a tiny picture (a 64-pixel scene) is shown with crisp pixels
  ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  if (!grid || !grid.length) return;
  const rows = grid.length, cols = grid[0].length;
  const max = Math.max(...grid.flat(), 1e-9);
  const cells = document.createElement("canvas");
  cells.width = cols; cells.height = rows;
  const pixels = cells.getContext("2d").createImageData(cols, rows);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = 4 * (r * cols + c);
      pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = 0;
      pixels.data[i + 3] = Math.round(255 * 0.8 * (1 - grid[r][c] / max));
    }
  }
  cells.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;  // smooth upscaling of the grid
  const [x, y, w, h] = modelRegion(canvas, model);
  ctx.drawImage(cells, x, y, w, h);
}

function showWord(index) {
  draw($("caption-canvas"), index >= 0 ? state.attention[index] : null, "captioner");
  document.querySelectorAll("#caption .word").forEach((el, i) => el.classList.toggle("active", i === index));
}

function showOutOfDomain(prediction) {
  if (prediction.out_of_domain === undefined) return;
  const away = Boolean(prediction.out_of_domain);
  $("ood").hidden = !away;
  if (away && typeof prediction.domain_score === "number") {
    const score = prediction.domain_score.toFixed(2);
    $("ood-text").textContent = `Its caption and answers are probably wrong (domain score ${score}).`;
  }
}

async function caption() {
  $("caption").textContent = "captioning\u2026";
  $("caption-meta").textContent = "";
  const upload = state.upload;
  const p = await predict("captioner", [{ b64: state.b64 }]);
  if (upload !== state.upload) return;  // another picture was chosen meanwhile
  state.words = p.captions ? p.captions.split(" ") : [];
  state.attention = p.attention.slice(0, state.words.length);
  state.locked = -1;
  const line = $("caption");
  line.textContent = "";
  state.words.forEach((word, i) => {
    const el = document.createElement("button");
    el.type = "button";
    el.className = "word";
    el.textContent = word;
    el.addEventListener("mouseenter", () => showWord(i));
    el.addEventListener("focus", () => showWord(i));
    el.addEventListener("mouseleave", () => showWord(state.locked));
    el.addEventListener("click", () => { state.locked = state.locked === i ? -1 : i; showWord(state.locked); });
    line.append(el, " ");
  });
  if (!state.words.length) line.textContent = "(no caption)";
  $("caption-meta").textContent = `score ${p.scores.toFixed(3)} (mean log-probability per word)`;
  showOutOfDomain(p);
  document.body.dataset.captioned = "yes";
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || !state.b64) return;
  $("ask").disabled = true;
  $("answer").textContent = "\u2026";
  $("answer-meta").textContent = "";
  $("unknown").hidden = true;
  const upload = state.upload;
  try {
    const p = await predict("vqa", [{ images: { b64: state.b64 }, questions: question }]);
    if (upload !== state.upload) return;
    showError("");
    $("answer").textContent = p.answers;
    $("answer-meta").textContent = `(probability ${p.scores.toFixed(2)})`;
    state.answerAttention = p.attention;
    draw($("answer-canvas"), p.attention, "vqa");
    if (p.unknown_words && p.unknown_words.length) {
      const words = p.unknown_words.join(", ");
      $("unknown").textContent = `The model never saw these words: ${words}; the answer is a guess.`;
      $("unknown").hidden = false;
    }
    showOutOfDomain(p);
  } catch (e) {
    $("answer").textContent = "";
    showError(e.message);
  } finally {
    $("ask").disabled = false;
  }
}

function readFile(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onerror = () => showError(`cannot read ${file.name}`);
  reader.onload = () => {
    const url = reader.result;
    state.b64 = url.slice(url.indexOf(",") + 1);
    state.upload += 1;
    delete document.body.dataset.captioned;
    showError("");
    $("ood").hidden = true;
    $("answer").textContent = "";
    $("answer-meta").textContent = "";
    $("unknown").hidden = true;
    state.answerAttention = null;
    state.image = null;  // until the new picture has loaded
    $("no-preview").hidden = true;
    const image = new Image();
    image.onload = () => {
      state.image = image;
      $("results").hidden = false;
      draw($("caption-canvas"), null);
      draw($("answer-canvas"), null);
    };
    image.onerror = () => {  // the browser cannot show it (e.g. TIFF); the server may read it all the same
      state.image = null;
      $("no-preview").hidden = false;
      draw($("caption-canvas"), null);
      draw($("answer-canvas"), null);
    };
    image.src = url;
    $("results").hidden = false;
    const upload = state.upload;
    caption().catch((e) => {
      if (upload !== state.upload) return;
      $("caption").textContent = "";
      showError(e.message);
    });
  };
  reader.readAsDataURL(file);
}

async function describeModels() {
  const lines = [];
  for (const name of ["captioner", "vqa"]) {
    try {
      const response = await fetch(`/v1/models/${name}/metadata`);
      if (!response.ok) { if (name === "vqa") $("vqa-card").hidden = true; continue; }
      const info = (await response.json()).info || {};
      state.models[name] = info;
      lines.push(name === "captioner"
        ? `captioner: ${info.backbone}, beam ${info.beam_width}`
        : `VQA: ${info.backbone}, ${info.answers.length} answers`);
    } catch (e) { /* the page still works; the status line just stays short */ }
  }
  $("models").textContent = lines.join(" \u00b7 ") || "no model information";
}

document.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (e) => readFile(e.target.files[0]));
  $("ask-form").addEventListener("submit", ask);
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  document.addEventListener("drop", (e) => readFile(e.dataTransfer.files[0]));
  describeModels();
});
