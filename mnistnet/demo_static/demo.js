// mnistnet demo: draw a digit (or a piece of clothing, a letter: what the model's classes
// are), see the 28x28 image the network gets and what it reads. Everything the page needs is
// in this file and the page (the model's class names); it talks to nothing but POST /predict.
"use strict";

const mnistDemo = (() => {
  const SIDE = 28; // MNIST's images are 28x28 ...
  const BOX = 20; // ... each digit scaled to fit 20x20, keeping its aspect ratio
  const INK = 0.05; // fainter pixels (the strokes' antialiased rims) do not widen the crop
  const STROKE_WIDTH = 22; // px on the 280 px pad: MNIST's pen for a digit drawn full height
  const UPDATE_DELAY_MS = 50; // while drawing, look and ask at most this often

  // ---- MNIST's preparation of a digit ------------------------------------------------------
  // Its Python twin is mnistnet/images.py (prepare_digit, used by `mnistnet predict digit.png`);
  // tests/test_demo.py holds the two to the same pixels on the same drawing: change both.

  /** The bounding box of the pixels of at least INK, or null where there are none. */
  function inkBox(gray, width, height) {
    let left = width, right = -1, top = height, bottom = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (gray[y * width + x] >= INK) {
          left = Math.min(left, x);
          right = Math.max(right, x);
          top = Math.min(top, y);
          bottom = y;
        }
      }
    }
    return right < 0 ? null : {left, top, width: right - left + 1, height: bottom - top + 1};
  }

  /** How `count` cells cut the `length` source pixels from `start` into equal parts: per
   * cell, the [pixel, share of the cell it covers] pairs (shares add up to 1). */
  function coverage(start, length, count) {
    const step = length / count;
    const end = start + length;
    const cells = [];
    for (let i = 0; i < count; i++) {
      const from = start + i * step;
      const to = i === count - 1 ? end : from + step; // no rounding past the box
      const parts = [];
      for (let pixel = Math.floor(from); pixel < to; pixel++) {
        const overlap = Math.min(to, pixel + 1) - Math.max(from, pixel);
        if (overlap > 0) parts.push([pixel, overlap / step]);
      }
      cells.push(parts);
    }
    return cells;
  }

  /** The box of a width-`stride` image scaled to width x height, each new pixel the mean of
   * the area it covers: grey levels along the edges, as MNIST's anti-aliased digits have. */
  function resample(gray, stride, box, width, height) {
    const columns = coverage(box.left, box.width, width);
    const rows = coverage(box.top, box.height, height);
    const out = new Float32Array(width * height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        let sum = 0;
        for (const [sy, wy] of rows[y]) {
          for (const [sx, wx] of columns[x]) sum += wy * wx * gray[sy * stride + sx];
        }
        out[y * width + x] = sum;
      }
    }
    return out;
  }

  /** The centre of mass [x, y] of an image, in pixels counted from 0. */
  function centreOfMass(image, width, height) {
    let mass = 0, mx = 0, my = 0;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const value = image[y * width + x];
        mass += value;
        mx += x * value;
        my += y * value;
      }
    }
    return [mx / mass, my / mass];
  }

  /**
   * A drawing made into an MNIST digit: crop to the ink's bounding box, scale it (keeping
   * its aspect ratio, averaging areas) to fit 20x20, and place it in a 28x28 image with its
   * centre of mass at pixel (14, 14), the centre.
   * @param {ArrayLike<number>} gray width * height values row by row, 0 background, 1 ink
   * @returns {Float32Array} 784 values in 0..1 row by row; all 0 if nothing is drawn
   */
  function preprocessDigit(gray, width, height) {
    const out = new Float32Array(SIDE * SIDE);
    const box = inkBox(gray, width, height);
    if (box === null) return out;
    const scale = BOX / Math.max(box.width, box.height);
    const w = Math.max(1, Math.round(box.width * scale));
    const h = Math.max(1, Math.round(box.height * scale));
    const digit = resample(gray, width, box, w, h);
    const [cx, cy] = centreOfMass(digit, w, h);
    // MNIST's digits have their centre of mass at pixel (14, 14). A lopsided digit would
    // leave the image that way: it is kept inside.
    const left = Math.min(Math.max(Math.round(SIDE / 2 - cx), 0), SIDE - w);
    const top = Math.min(Math.max(Math.round(SIDE / 2 - cy), 0), SIDE - h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) out[(top + y) * SIDE + left + x] = Math.min(1, digit[y * w + x]);
    }
    return out;
  }

  // ---- the page ----------------------------------------------------------------------------

  const state = {
    timer: null, // the update waiting to run
    inFlight: false, // a /predict request is on its way
    queued: null, // the pixels to send once it is back
    generation: 0, // counts the clears: answers from before one are stale
    input: new Float32Array(SIDE * SIDE), // what the network was last shown
    answer: null, // its last answer shown
  };
  let pad, pen, seen, answerLabel, statusLine;
  let bars = [];
  // The model's classes, as the server wrote them into the page.
  const classes = JSON.parse(document.getElementById("classes").textContent);
  let drawing = null; // {pointerId, x, y} of the stroke being drawn

  function start() {
    pad = document.getElementById("pad");
    pen = pad.getContext("2d", {willReadFrequently: true});
    seen = document.getElementById("seen").getContext("2d");
    answerLabel = document.getElementById("label");
    statusLine = document.getElementById("status");
    bars = makeBars(document.getElementById("bars"));
    pen.lineWidth = STROKE_WIDTH;
    pen.lineCap = "round";
    pen.lineJoin = "round";
    pad.addEventListener("pointerdown", penDown);
    pad.addEventListener("pointermove", penMove);
    pad.addEventListener("pointerup", penUp);
    pad.addEventListener("pointercancel", penUp);
    document.getElementById("clear").addEventListener("click", clear);
    clear();
  }

  function makeBars(list) {
    const made = [];
    const longest = Math.max(...classes.names.map((name) => name.length));
    list.style.setProperty("--label-width", `${Math.max(1.2, 0.6 * longest + 0.4)}rem`);
    for (const name of classes.names) {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = name; // a model file's text: never parsed as HTML
      item.append(label);
      item.insertAdjacentHTML("beforeend", '<span class="track"><span class="fill"></span>' +
        '</span><span class="value"></span>');
      list.append(item);
      made.push({item, fill: item.querySelector(".fill"), value: item.querySelector(".value")});
    }
    return made;
  }

  /** An event's position in the pad's own pixels (its CSS size may differ). */
  function padPoint(event) {
    const rect = pad.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left) * pad.width / rect.width,
      y: (event.clientY - rect.top) * pad.height / rect.height,
    };
  }

  function penDown(event) {
    if (event.button !== 0 || drawing !== null) return; // one pen at a time
    pad.setPointerCapture(event.pointerId);
    const point = padPoint(event);
    drawing = {pointerId: event.pointerId, ...point};
    pen.fillStyle = "#fff";
    pen.beginPath();
    pen.arc(point.x, point.y, STROKE_WIDTH / 2, 0, 2 * Math.PI);
    pen.fill();
    scheduleUpdate();
    event.preventDefault();
  }

  function penMove(event) {
    if (drawing === null || event.pointerId !== drawing.pointerId) return;
    const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    pen.strokeStyle = "#fff";
    pen.beginPath();
    pen.moveTo(drawing.x, drawing.y);
    for (const move of moves.length ? moves : [event]) {
      const point = padPoint(move);
      pen.lineTo(point.x, point.y);
      Object.assign(drawing, point);
    }
    pen.stroke();
    scheduleUpdate();
  }

  function penUp(event) {
    if (drawing !== null && event.pointerId === drawing.pointerId) drawing = null;
  }

  function scheduleUpdate() {
    if (state.timer === null) state.timer = setTimeout(update, UPDATE_DELAY_MS);
  }

  /** The pad's pixels as grey levels: the strokes are white on black. */
  function padGray() {
    const {data} = pen.getImageData(0, 0, pad.width, pad.height);
    const gray = new Float32Array(pad.width * pad.height);
    for (let i = 0; i < gray.length; i++) gray[i] = data[4 * i] / 255;
    return gray;
  }

  /** Prepare the drawing, show it as the network sees it, and ask the network. */
  function update() {
    clearTimeout(state.timer);
    state.timer = null;
    state.input = preprocessDigit(padGray(), pad.width, pad.height);
    showInput(state.input);
    if (state.input.some((value) => value > 0)) ask(state.input);
    else showAnswer(null);
  }

  function showInput(pixels) {
    const image = seen.createImageData(SIDE, SIDE);
    pixels.forEach((value, i) => {
      const level = Math.round(value * 255);
      image.data.set([level, level, level, 255], 4 * i);
    });
    seen.putImageData(image, 0, 0);
  }

  function ask(pixels) {
    if (state.inFlight) { // one request at a time; only the newest pixels wait
      state.queued = pixels;
      return;
    }
    state.inFlight = true;
    const generation = state.generation;
    fetch("/predict", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({pixels: Array.from(pixels)}),
    })
      .then(readAnswer)
      .then((answer) => {
        if (generation === state.generation) showAnswer(answer);
      })
      .catch((error) => {
        if (generation === state.generation) say(`No answer from the network: ${error.message}`);
      })
      .finally(() => {
        state.inFlight = false;
        const next = state.queued;
        state.queued = null;
        if (next !== null) ask(next);
      });
  }

  async function readAnswer(response) {
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  /** The answer as the big label and a bar per class; null: nothing drawn. */
  function showAnswer(answer) {
    state.answer = answer;
    answerLabel.textContent = answer === null ? "?" : answer.label;
    bars.forEach((bar, index) => {
      const value = answer === null ? 0 : answer.probabilities[index];
      bar.fill.style.width = `${100 * Math.min(Math.max(value, 0), 1)}%`;
      bar.value.textContent = answer === null ? "" : value.toFixed(2);
      bar.item.classList.toggle("top", answer !== null && index === answer.class);
    });
    say(answer === null ? `Draw a ${classes.subject} in the black square.` : "");
  }

  function say(message) {
    statusLine.textContent = message;
  }

  function clear() {
    pen.fillStyle = "#000";
    pen.fillRect(0, 0, pad.width, pad.height);
    drawing = null;
    state.generation += 1;
    state.queued = null;
    update();
  }

  /** True when nothing is waiting: no update pending, no request on its way. */
  function isIdle() {
    return state.timer === null && !state.inFlight && state.queued === null;
  }

  start();

  return {
    preprocessDigit,
    update,
    clear,
    isIdle,
    get input() { return state.input; },
    get answer() { return state.answer; },
  };
})();
