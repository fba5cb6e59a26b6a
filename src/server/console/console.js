// The facepool console: calls the HTTP API with the token the user typed
// (kept in sessionStorage: this tab only) and shows what it answers.
// No framework, no inline script or style (the page's Content-Security-
// Policy allows this file and same-origin requests only). Text the server
// or a user supplies is always set as text, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "facepool-token";
  const PAGE = 20;
  const state = {
    token: "",
    info: null,
    offset: 0,
    total: 0,
    search: "",
    searchTimer: 0,
    liveTimer: 0,
    liveRun: 0,
    // Request numbers: an answer older than the newest request of its
    // kind is dropped, so a slow answer never overwrites a newer one.
    seq: { connect: 0, people: 0, verify: 0, identify: 0 },
    lastBatches: null,
  };

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  // One API call: the parsed JSON answer, or an ApiError with the API's
  // own code and message.
  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.token };
    let r;
    try {
      r = await fetch(path, { method, headers, body, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "unreachable", "the request did not reach the server (" + e.message + ")");
    }
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!r.ok) {
      const e = data && data.error ? data.error : { code: "http_" + r.status, message: text.slice(0, 300) || r.statusText };
      throw new ApiError(r.status, e.code, e.message, r.headers.get("Retry-After"));
    }
    return data;
  }

  // Takes a number for a new request of `kind`; `current(kind, n)` says
  // whether it is still the newest.
  const next = (kind) => ++state.seq[kind];
  const current = (kind, n) => state.seq[kind] === n;

  function describe(e) {
    if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
    let s = e.status ? e.status + " " + e.code + ": " + e.message : e.message;
    if (e.status === 429 && e.retryAfter) s += " (retry after " + e.retryAfter + " s)";
    if (e.status === 401 || e.status === 403) s += " Check the API token.";
    return s;
  }

  function showError(id, e) {
    const el = $(id);
    el.textContent = typeof e === "string" ? e : describe(e);
    el.hidden = false;
  }

  function clearError(id) {
    const el = $(id);
    el.textContent = "";
    el.hidden = true;
  }

  const mb = (n) => (n / (1 << 20)).toFixed(1) + " MB";
  const fixed = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

  // Refuses, before sending, a request the server would refuse for its
  // size (its limit is in /v1/info).
  function checkSize(files) {
    if (!state.info) return null;
    const total = files.reduce((n, f) => n + f.size, 0);
    // base64 or multipart framing adds little; the files are the body.
    const max = state.info.limits.max_body_bytes;
    if (total > max) {
      return "Not sent: the photos are " + mb(total) + ", more than this server takes in one request (" + mb(max) + ", serve --max-body).";
    }
    return null;
  }

  // ---- the token and the server ----

  async function connect() {
    const n = next("connect");
    const line = $("server");
    line.classList.remove("bad");
    line.textContent = "Connecting…";
    stopLive();
    try {
      const info = await api("GET", "/v1/info");
      if (!current("connect", n)) return;
      state.info = info;
      const g = info.gallery ? info.gallery.store + " gallery" : "in-memory gallery";
      // The model's file name (not where it lies on the server).
      const model = info.model.split(/[\\/]/).pop();
      line.textContent = model + " on " + info.backend + " · threshold " + info.threshold.toFixed(3) + " · " + g;
      $("gallery-store").textContent = info.gallery ? "Stored in the " + info.gallery.store + " gallery (" + info.gallery.place + ")." : "";
      loadPeople();
      startLive();
    } catch (e) {
      if (!current("connect", n)) return;
      state.info = null;
      line.classList.add("bad");
      line.textContent = describe(e);
      $("people").querySelector("tbody").replaceChildren();
      $("people-page").textContent = "";
    }
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim().replace(/^bearer\s+/i, "");
    // A header value is visible ASCII.
    if (!/^[\x21-\x7e]+$/.test(token)) {
      $("server").classList.add("bad");
      $("server").textContent = "A token is printable ASCII without spaces.";
      return;
    }
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    connect();
  });

  // ---- photos: pick or drop, preview, boxes ----

  function file(id) {
    const f = $(id).files;
    return f && f.length ? f[0] : null;
  }

  function preview(id) {
    // An answer still on its way is for the photo that was there.
    if (id === "identify-image") next("identify");
    else next("verify");
    const fig = $(id + "-photo");
    const img = fig.querySelector("img");
    const f = file(id);
    fig.querySelectorAll(".box").forEach((b) => b.remove());
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    if (!f) {
      fig.hidden = true;
      return;
    }
    const url = URL.createObjectURL(f);
    img.dataset.url = url;
    img.src = url;
    fig.querySelector("figcaption").textContent = f.name + " · " + mb(f.size);
    fig.hidden = false;
  }

  // Draws a face box (image pixels) over the photo `id`.
  async function drawBox(id, box, caption) {
    const fig = $(id + "-photo");
    const img = fig.querySelector("img");
    const url = img.dataset.url;
    fig.querySelectorAll(".box").forEach((b) => b.remove());
    fig.querySelector("figcaption").textContent = caption;
    if (!box) return;
    try {
      await img.decode();
    } catch (_) {
      return;
    }
    const w = img.naturalWidth;
    const h = img.naturalHeight;
    if (!w || !h || img.dataset.url !== url) return;
    const d = document.createElement("div");
    d.className = "box";
    d.style.left = (100 * box.left) / w + "%";
    d.style.top = (100 * box.top) / h + "%";
    d.style.width = (100 * (box.right - box.left)) / w + "%";
    d.style.height = (100 * (box.bottom - box.top)) / h + "%";
    fig.querySelector(".frame").appendChild(d);
  }

  const faceCaption = (how, box) =>
    box ? "face " + how + " at " + Math.round(box.left) + "," + Math.round(box.top) + " – " + Math.round(box.right) + "," + Math.round(box.bottom)
        : "the whole photo taken as an aligned face (" + how + ")";

  for (const id of ["image1", "image2", "identify-image"]) {
    $(id).addEventListener("change", () => preview(id));
  }
  document.querySelectorAll(".drop").forEach((zone) => {
    const input = $(zone.dataset.for);
    zone.addEventListener("dragover", (ev) => {
      ev.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("over");
      if (ev.dataTransfer && ev.dataTransfer.files.length) {
        input.files = ev.dataTransfer.files;
        input.dispatchEvent(new Event("change"));
      }
    });
  });

  function timings(tableId, t) {
    const table = $(tableId);
    const body = table.querySelector("tbody");
    body.replaceChildren();
    for (const k of ["admission", "queue", "prepare", "batch_wait", "inference", "search", "total"]) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = k.replace("_", " ");
      const td = document.createElement("td");
      td.textContent = fixed(t[k], 2);
      tr.append(th, td);
      body.append(tr);
    }
    table.hidden = false;
  }

  function busy(button, on) {
    button.disabled = on;
    button.setAttribute("aria-busy", on ? "true" : "false");
  }

  // ---- verify ----

  function clearBoxes(id) {
    $(id + "-photo").querySelectorAll(".box").forEach((b) => b.remove());
  }

  function resetVerify() {
    clearBoxes("image1");
    clearBoxes("image2");
    $("similarity").textContent = "–";
    $("threshold").textContent = "";
    $("verdict").textContent = "–";
    $("verdict").className = "";
    $("similarity-bar").style.width = "0";
    $("verify-timings").hidden = true;
  }

  $("verify").addEventListener("click", async () => {
    clearError("verify-error");
    resetVerify();
    const a = file("image1");
    const b = file("image2");
    if (!a || !b) {
      showError("verify-error", "Pick two photos first.");
      return;
    }
    const tooBig = checkSize([a, b]);
    if (tooBig) {
      showError("verify-error", tooBig);
      return;
    }
    const form = new FormData();
    form.append("image1", a, a.name);
    form.append("image2", b, b.name);
    const button = $("verify");
    const n = next("verify");
    busy(button, true);
    try {
      const v = await api("POST", "/v1/verify", form);
      if (!current("verify", n)) return;
      $("similarity").textContent = v.similarity.toFixed(3);
      $("threshold").textContent = "threshold " + v.threshold.toFixed(3);
      $("similarity-bar").style.width = Math.max(0, Math.min(1, v.similarity)) * 100 + "%";
      $("threshold-mark").style.left = Math.max(0, Math.min(1, v.threshold)) * 100 + "%";
      $("verdict").textContent = v.same ? "Same person" : "Different people";
      $("verdict").className = v.same ? "same" : "different";
      timings("verify-timings", v.timings_ms);
      await drawBox("image1", v.boxes[0], faceCaption(v.faces[0], v.boxes[0]));
      await drawBox("image2", v.boxes[1], faceCaption(v.faces[1], v.boxes[1]));
    } catch (e) {
      if (current("verify", n)) showError("verify-error", e);
    } finally {
      busy(button, false);
    }
  });

  // ---- identify ----

  $("identify").addEventListener("click", async () => {
    clearError("identify-error");
    clearBoxes("identify-image");
    $("matches").replaceChildren();
    $("identify-best").textContent = "–";
    $("identify-timings").hidden = true;
    const f = file("identify-image");
    if (!f) {
      showError("identify-error", "Pick a photo first.");
      return;
    }
    const tooBig = checkSize([f]);
    if (tooBig) {
      showError("identify-error", tooBig);
      return;
    }
    const form = new FormData();
    form.append("image", f, f.name);
    form.append("k", "5");
    const button = $("identify");
    const n = next("identify");
    busy(button, true);
    try {
      const r = await api("POST", "/v1/identify", form);
      if (!current("identify", n)) return;
      $("identify-best").textContent = r.best
        ? r.best.id + " (" + r.best.similarity.toFixed(3) + ")"
        : "nobody in the gallery reaches the threshold " + r.threshold.toFixed(3);
      for (const m of r.matches) {
        const li = document.createElement("li");
        li.textContent = m.id + " · " + m.similarity.toFixed(3) + (m.meta ? " · " + m.meta : "");
        if (m.similarity >= r.threshold) li.className = "best";
        $("matches").append(li);
      }
      if (!r.matches.length) {
        const li = document.createElement("li");
        li.textContent = "The gallery is empty.";
        $("matches").append(li);
      }
      timings("identify-timings", r.timings_ms);
      await drawBox("identify-image", r.box, faceCaption(r.face, r.box));
    } catch (e) {
      if (current("identify", n)) showError("identify-error", e);
    } finally {
      busy(button, false);
    }
  });

  // ---- gallery ----

  async function loadPeople() {
    const n = next("people");
    clearError("people-error");
    $("people-prev").disabled = true;
    $("people-next").disabled = true;
    const q = new URLSearchParams({ offset: String(state.offset), limit: String(PAGE) });
    if (state.search) q.set("search", state.search);
    try {
      const page = await api("GET", "/v1/people?" + q);
      if (!current("people", n)) return;
      // Past the end (people removed meanwhile, here or elsewhere): the
      // last page instead.
      if (!page.people.length && page.total > 0 && state.offset > 0) {
        state.offset = Math.floor((page.total - 1) / PAGE) * PAGE;
        return loadPeople();
      }
      state.total = page.total;
      const body = $("people").querySelector("tbody");
      body.replaceChildren();
      for (const p of page.people) body.append(personRow(p));
      if (!page.people.length) {
        const tr = document.createElement("tr");
        const td = document.createElement("td");
        td.colSpan = 4;
        td.textContent = state.search ? "No id contains “" + state.search + "”." : "Nobody is enrolled yet.";
        tr.append(td);
        body.append(tr);
      }
      const first = page.people.length ? state.offset + 1 : 0;
      $("people-page").textContent = first + "–" + (state.offset + page.people.length) + " of " + page.total;
      $("people-prev").disabled = state.offset === 0;
      $("people-next").disabled = state.offset + page.people.length >= page.total;
    } catch (e) {
      if (current("people", n)) {
        showError("people-error", e);
        $("people-prev").disabled = state.offset === 0;
      }
    }
  }

  function personRow(p) {
    const tr = document.createElement("tr");
    tr.dataset.id = p.id;
    const id = document.createElement("td");
    id.textContent = p.id;
    const faces = document.createElement("td");
    faces.textContent = String(p.faces);
    const meta = document.createElement("td");
    meta.textContent = p.meta || "";
    const actions = document.createElement("td");
    const add = document.createElement("button");
    add.type = "button";
    add.className = "plain";
    add.textContent = "Add faces";
    add.setAttribute("aria-label", "Add faces to " + p.id);
    add.addEventListener("click", () => {
      $("person-id").value = p.id;
      $("person-images").focus();
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "danger";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", "Remove " + p.id);
    remove.addEventListener("click", () => removePerson(p.id, remove));
    actions.append(add, " ", remove);
    tr.append(id, faces, meta, actions);
    return tr;
  }

  async function removePerson(id, button) {
    clearError("people-error");
    busy(button, true);
    try {
      const r = await api("DELETE", "/v1/people/" + encodeURIComponent(id));
      const status = $("person-status");
      status.textContent = "Removed " + r.id + " (" + r.removed_faces + " faces).";
      // Its row goes: the focus goes to what was said.
      status.focus();
      await loadPeople();
    } catch (e) {
      showError("people-error", e);
    } finally {
      busy(button, false);
    }
  }

  $("person-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearError("person-error");
    $("person-status").textContent = "";
    const id = $("person-id").value.trim();
    const files = Array.from($("person-images").files || []);
    if (!id || !files.length) {
      showError("person-error", "An id and at least one photo are needed.");
      return;
    }
    const tooBig = checkSize(files);
    if (tooBig) {
      showError("person-error", tooBig);
      return;
    }
    const form = new FormData();
    for (const f of files) form.append("images", f, f.name);
    const meta = $("person-meta").value;
    if (meta) form.append("meta", meta);
    const replace = $("person-replace").checked ? "?replace=true" : "";
    const button = $("add-person");
    busy(button, true);
    try {
      const p = await api("PUT", "/v1/people/" + encodeURIComponent(id) + replace, form);
      $("person-status").textContent = p.id + " has " + p.faces + (p.faces === 1 ? " face." : " faces.");
      $("person-images").value = "";
      await loadPeople();
    } catch (e) {
      showError("person-error", e);
    } finally {
      busy(button, false);
    }
  });

  $("people-search").addEventListener("input", () => {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(() => {
      state.search = $("people-search").value.trim();
      state.offset = 0;
      loadPeople();
    }, 250);
  });
  $("people-prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE);
    loadPeople();
  });
  $("people-next").addEventListener("click", () => {
    state.offset += PAGE;
    loadPeople();
  });

  // ---- live ----

  // One chain of polls at a time: a chain whose run number is no longer
  // the current one ends.
  function stopLive() {
    clearTimeout(state.liveTimer);
    state.liveTimer = 0;
    state.liveRun += 1;
  }

  function startLive() {
    stopLive();
    state.lastBatches = null;
    tick(state.liveRun);
  }

  async function tick(run) {
    if (run !== state.liveRun) return;
    let again = true;
    if (!document.hidden) {
      try {
        const stats = await api("GET", "/v1/stats?seconds=120");
        if (run !== state.liveRun) return;
        render(stats);
        say($("live-state"), "");
      } catch (e) {
        say($("live-state"), describe(e));
        again = e.status !== 401 && e.status !== 403;
      }
    }
    if (again && run === state.liveRun) state.liveTimer = setTimeout(() => tick(run), 1000);
  }

  // Sets a live region's text only when it changes (a screen reader reads
  // every change).
  function say(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function render(s) {
    const secs = s.seconds;
    const total = (x) => x.ok + x.refused + x.client_errors + x.server_errors;
    // The last three whole seconds (the current one is still counting).
    const whole = secs.filter((x) => x.ago >= 1 && x.ago <= 3);
    const rps = whole.length ? whole.reduce((n, x) => n + total(x), 0) / whole.length : 0;
    $("live-rps").textContent = rps.toFixed(1);
    $("live-p50").textContent = s.p50_ms == null ? "–" : fixed(s.p50_ms, 1) + " ms";
    $("live-p99").textContent = s.p99_ms == null ? "–" : fixed(s.p99_ms, 1) + " ms";
    $("live-refused").textContent = String(secs.reduce((n, x) => n + x.refused, 0));
    $("live-workers").textContent = s.pool.workers + " / " + s.pool.capacity;
    $("live-queue").textContent = s.pool.waiting + " / " + s.pool.running;
    const b = s.batcher;
    const last = state.lastBatches;
    let fill = "–";
    if (last && b.batches > last.batches) {
      fill = ((b.faces - last.faces) / (b.batches - last.batches)).toFixed(2);
    } else if (b.batches) {
      fill = b.mean_batch_size.toFixed(2) + " (mean)";
    }
    state.lastBatches = { batches: b.batches, faces: b.faces };
    $("live-batch").textContent = fill + " of " + b.batch_max;
    const a = s.admission;
    $("live-limit").textContent = a.in_use_faces + " / " + a.limit_faces + " faces";
    $("live-wait").textContent = a.expected_wait_ms == null ? "–" : fixed(a.expected_wait_ms, 1) + " ms";
    $("live-memory").textContent = s.memory_bytes ? mb(s.memory_bytes) : "–";
    $("live-people").textContent = String(s.people);
    chart("chart-rps", secs, [
      ["ok-line", (x) => x.ok],
      ["refused-line", (x) => x.refused],
      ["failed-line", (x) => x.client_errors + x.server_errors],
    ]);
    chart("chart-latency", secs, [
      ["p50-line", (x) => x.p50_ms],
      ["p99-line", (x) => x.p99_ms],
    ]);
  }

  // Lines of `series` over the seconds (oldest left); a missing value
  // breaks its line.
  function chart(id, secs, series) {
    const svg = $(id);
    const W = 240;
    const H = 60;
    const n = Math.max(2, secs.length);
    let max = 1;
    for (const [, f] of series) for (const x of secs) max = Math.max(max, f(x) || 0);
    svg.replaceChildren();
    const ns = "http://www.w3.org/2000/svg";
    for (const [cls, f] of series) {
      let pts = [];
      const flush = () => {
        if (pts.length > 1) {
          const line = document.createElementNS(ns, "polyline");
          line.setAttribute("class", cls);
          line.setAttribute("points", pts.join(" "));
          svg.append(line);
        }
        pts = [];
      };
      secs.forEach((x, i) => {
        const v = f(x);
        if (v == null) {
          flush();
          return;
        }
        pts.push(((i * W) / (n - 1)).toFixed(1) + "," + (H - 2 - (v / max) * (H - 6)).toFixed(1));
      });
      flush();
    }
  }

  // ---- start ----
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    state.token = saved;
    $("token").value = saved;
    connect();
  }
})();
