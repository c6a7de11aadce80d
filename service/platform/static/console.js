// Scriptgate console. Plain JavaScript, no build step: see service/console.py for why.
// Every text that came from the server (docstrings, descriptions, output, errors) goes
// into the page through textContent or a text node, never as HTML.
"use strict";
(function () {
  const KEY = "scriptgate.key", HEADER = "scriptgate.header";
  const FINISHED = ["succeeded", "failed", "timed_out", "cancelled"];
  const ZONE_HEADERS = { api: "X-API-Key", admin: "X-Admin-Key" };
  const OPERATOR_VIEWS = ["/_platform/keys", "/_platform/routes", "/_platform/schedules"];
  const POLL_MS = 1000, MAX_POLLS = 3600, RELIST_MS = 2000, MAX_RELISTS = 150, MAX_LOG_LINES = 2000, MAX_TREE_NODES = 5000;
  const state = { scripts: [], may: {}, caller: null, runsNext: null, runsAsked: 0, relist: null, relists: 0, scriptAsked: 0 };
  const $ = (id) => document.getElementById(id);
  let leaveView = null; // stops the live updates of the view being left

  // ---- building the page, as text only ----
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === false || value == null) continue;
      if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name in node && typeof value !== "string") node[name] = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    return put(node, ...children);
  }
  function put(node, ...children) { // append, skipping the null and false of a condition
    for (const child of children.flat()) {
      if (child != null && child !== false) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  const clear = (node) => { node.replaceChildren(); return node; };
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

  // ---- the key: this tab's session storage, one header per zone ----
  const session = {
    key: () => sessionStorage.getItem(KEY),
    header: () => sessionStorage.getItem(HEADER),
    signedIn: () => sessionStorage.getItem(HEADER) !== null,
    save(key, header) { sessionStorage.setItem(KEY, key); sessionStorage.setItem(HEADER, header); },
    clear() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(HEADER); },
  };

  function keyHeaders(url) {
    const key = session.key();
    if (!key) return {};
    const zone = url.split("/")[1];
    if (zone === "_platform") {
      // Views for operators take a platform key, in X-Admin-Key; the job views take the
      // key in the header it signed in with.
      if (!OPERATOR_VIEWS.some((view) => url.startsWith(view))) return { [session.header()]: key };
      const platformKey = session.header() === "X-Admin-Key" || state.may.keys || state.may.schedules;
      return platformKey ? { "X-Admin-Key": key } : {};
    }
    return ZONE_HEADERS[zone] ? { [ZONE_HEADERS[zone]]: key } : {};
  }

  function request(url, options = {}) {
    const headers = Object.assign({}, keyHeaders(url), options.headers || {});
    return fetch(url, Object.assign({}, options, { headers, cache: "no-store", credentials: "omit" }));
  }

  async function json(url, options) {
    const response = await request(url, options);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) throw Object.assign(new Error(errorText(response, body)), { response, body });
    return body;
  }

  function errorText(response, body) {
    const what = body && body.error ? body.error + (body.reason ? " (" + body.reason + ")" : "") : response.statusText;
    return response.status + " " + what;
  }

  // ---- sign in ----
  async function signIn(key) {
    state.relists = 0;
    // The server says which header the key belongs to: the API key's, else the admin's.
    for (const header of key ? ["X-API-Key", "X-Admin-Key"] : [""]) {
      const headers = header ? { [header]: key } : {};
      const response = await fetch("/_platform/console/scripts", { headers, cache: "no-store", credentials: "omit" });
      if (response.status === 401) continue;
      if (!response.ok) throw new Error(errorText(response, await response.json().catch(() => null)));
      session.save(key, header);
      loaded(await response.json());
      return;
    }
    throw new Error("This key is not recognised, or has expired.");
  }

  async function loadScripts() {
    performance.mark("scripts-requested");
    loaded(await json("/_platform/console/scripts"));
  }

  function loaded(listing) {
    state.scripts = listing.scripts;
    state.may = listing.may;
    state.caller = listing.caller;
    $("who").textContent = listing.caller.owner || listing.caller.id;
    $("nav").hidden = false;
    $("sign-out").hidden = false;
    $("nav-admin").hidden = !state.may.keys; // for admins: a key that may see the keys
    renderScriptList();
    const urls = clear($("script-urls"));
    for (const s of state.scripts) urls.append(el("option", { value: s.url }));
    // Scripts the server has not described yet are listed by name; ask again shortly,
    // a bounded number of times, until each has its summary.
    clearTimeout(state.relist);
    if (state.scripts.some((s) => s.pending) && state.relists++ < MAX_RELISTS) {
      state.relist = setTimeout(() => loadScripts().catch(() => {}), RELIST_MS);
    }
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key").value;
    $("signin-error").textContent = "";
    try {
      await signIn(key);
      $("key").value = "";
      route();
    } catch (e) {
      $("signin-error").textContent = e.message;
    }
  });
  $("no-key").addEventListener("click", async () => {
    try { await signIn(""); route(); } catch (e) { $("signin-error").textContent = e.message; }
  });
  $("sign-out").addEventListener("click", () => {
    clearTimeout(state.relist);
    session.clear();
    state.scripts = [];
    $("nav").hidden = $("sign-out").hidden = true;
    $("who").textContent = "";
    clear($("script-list"));
    route();
  });

  // ---- the script list: by zone and folder, searchable ----
  function renderScriptList() {
    const focused = document.activeElement && $("script-list").contains(document.activeElement)
      ? document.activeElement.getAttribute("href") : null;
    const list = clear($("script-list"));
    const groups = new Map();
    for (const s of state.scripts) {
      const group = s.zone + (s.folder ? " / " + s.folder : "");
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push(s);
    }
    const fragment = document.createDocumentFragment();
    for (const [group, scripts] of groups) {
      const items = scripts.map((s) =>
        el("li", { "data-search": (s.url + " " + (s.summary || "")).toLowerCase() },
          el("a", { href: "#/scripts" + s.url }, s.name),
          s.summary ? el("span", { class: "summary", text: s.summary }) : null,
          s.async ? el("span", { class: "tag", text: "job" }) : null));
      fragment.append(el("div", { class: "group" }, el("h2", { text: group }), el("ul", {}, items)));
    }
    list.append(fragment);
    filterScripts();
    if (focused) { const again = list.querySelector('a[href="' + CSS.escape(focused) + '"]'); if (again) again.focus(); }
    performance.mark("scripts-rendered");
  }

  function filterScripts() {
    const words = $("search").value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const group of $("script-list").children) {
      let any = false;
      for (const item of group.querySelectorAll("li")) {
        const match = words.every((w) => item.dataset.search.includes(w));
        item.hidden = !match;
        any = any || match;
        shown += match ? 1 : 0;
      }
      group.hidden = !any;
    }
    $("script-count").textContent = shown + " of " + state.scripts.length + " scripts";
  }
  $("search").addEventListener("input", filterScripts);

  // ---- a script's form, from its parameters' JSON Schema ----
  function resolve(schema, root) {
    let node = schema || {};
    for (let i = 0; i < 10 && node.$ref; i++) node = root.$defs[node.$ref.split("/").pop()] || {};
    const options = node.anyOf || node.oneOf;
    if (options) {
      const real = options.filter((o) => o.type !== "null");
      if (real.length === 1) return Object.assign({}, resolve(real[0], root), { default: node.default, description: node.description });
    }
    return node;
  }

  function inputFor(schema, id, value, describedBy) {
    const common = { id, "aria-describedby": describedBy };
    if (schema.enum || schema.const !== undefined) {
      const choices = schema.enum || [schema.const];
      return el("select", common, el("option", { value: "", text: "" }),
        choices.map((c) => el("option", { value: String(c), text: String(c), selected: String(c) === String(value) })));
    }
    if (schema.type === "boolean") return el("input", Object.assign({ type: "checkbox", checked: value === true }, common));
    if (schema.type === "integer" || schema.type === "number") {
      const low = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum + (schema.type === "integer" ? 1 : 0) : null);
      const high = schema.maximum ?? (schema.exclusiveMaximum !== undefined ? schema.exclusiveMaximum - (schema.type === "integer" ? 1 : 0) : null);
      return el("input", Object.assign({ type: "number", step: schema.type === "integer" ? "1" : "any", min: low, max: high, value: value ?? "" }, common));
    }
    const type = { date: "date", "date-time": "datetime-local", email: "email", time: "time" }[schema.format] || "text";
    return el("input", Object.assign({ type, value: value ?? "", minlength: schema.minLength, maxlength: schema.maxLength }, common));
  }

  function fieldValue(input) {
    if (input.type === "checkbox") return input.checked ? "true" : "false";
    return input.value;
  }

  function queryField(param, root) {
    const schema = resolve(root.properties[param.name], root);
    const id = "p-" + param.name;
    const hint = id + "-hint", error = id + "-error";
    const field = el("div", { class: "field", "data-field": param.name });
    const label = el("label", { for: id }, param.name, param.required ? el("span", { class: "req", text: " (required)" }) : null);
    const description = param.description || schema.description || "";
    const notes = el("p", { class: "hint", id: hint, text: description });
    const slot = el("p", { class: "error", id: error, role: "alert" });
    if (param.many) {
      const itemSchema = resolve(schema.items, root);
      const values = el("div", { class: "repeated", "data-values": param.name });
      const add = (value) => {
        const n = values.children.length;
        const input = inputFor(itemSchema, n ? id + "-" + n : id, value, hint + " " + error);
        input.dataset.param = param.name;
        values.append(el("div", { class: "row" }, input,
          el("button", { type: "button", class: "secondary", "aria-label": "Remove this " + param.name, onclick: (e) => e.target.parentNode.remove() }, "Remove")));
      };
      for (const v of schema.default || [undefined]) add(v);
      field.append(label, values, el("button", { type: "button", class: "secondary", onclick: () => add() }, "Add another " + param.name), notes, slot);
    } else {
      const input = inputFor(schema, id, schema.default, hint + " " + error);
      input.dataset.param = param.name;
      put(field, schema.type === "boolean" ? el("div", { class: "check" }, input, label) : label, schema.type === "boolean" ? null : input, notes, slot);
    }
    return field;
  }

  function bodyField(param, root) {
    const schema = resolve(root.properties[param.name], root);
    const fields = Object.keys(schema.properties || {}).join(", ");
    const hint = "body-hint", error = "body-error";
    return el("div", { class: "field", "data-field": "" },
      el("label", { for: "body" }, "Body (JSON)", param.required ? el("span", { class: "req", text: " (required)" }) : null),
      el("textarea", { id: "body", rows: 8, spellcheck: "false", "aria-describedby": hint + " " + error, value: fields ? "{\n}" : "" }),
      el("p", { class: "hint", id: hint, text: [param.description || schema.description || "", fields ? "Fields: " + fields : ""].filter(Boolean).join(" ") }),
      el("p", { class: "error", id: error, role: "alert" }));
  }

  async function showScript(url) {
    // The listing carries no forms: the one opened is asked for, as it is now.
    const pane = clear($("script-pane"));
    pane.append(el("p", { class: "hint", text: "Reading " + url + "…" }));
    let script = null;
    const asked = ++state.scriptAsked; // a slower answer for a script left since is dropped
    try { script = (await json("/_platform/console/scripts?url=" + encodeURIComponent(url))).scripts[0]; } catch (e) { script = null; }
    if (asked !== state.scriptAsked) return;
    clear(pane);
    if (!script) {
      pane.append(el("p", { class: "error", text: url + " is not available to this key, or does not load right now." }));
      return;
    }
    const params = script.params || { query: [], body: null, schema: { properties: {} } };
    const form = el("form", { class: "run-form", novalidate: true });
    for (const p of params.query) form.append(queryField(p, params.schema));
    if (params.body) form.append(bodyField(params.body, params.schema));
    else if (!script.params && !script.methods.includes("GET")) {
      form.append(bodyField({ name: "", required: false, description: "Sent as the request's JSON body." }, params.schema));
    }
    const jobFirst = script.async;
    const runNow = el("button", { type: "submit", "data-mode": "now" }, "Run now");
    const runJob = el("button", { type: "submit", "data-mode": "job", class: jobFirst ? "" : "secondary" }, "Run as a job");
    form.append(el("div", { class: "buttons" }, jobFirst ? runJob : [runNow, runJob]));
    const output = el("div", { class: "output", "aria-live": "polite" });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const mode = event.submitter ? event.submitter.dataset.mode : (jobFirst ? "job" : "now");
      runScript(script, form, output, mode);
    });
    put(pane, el("h2", { text: script.url }), el("p", { class: "summary", text: script.summary }),
      script.description ? el("p", { class: "description", text: script.description }) : null,
      script.async ? el("p", { class: "hint", text: "This script always runs as a job: follow it on its run page." }) : null,
      form, output);
  }

  function methodFor(script, hasBody) {
    const order = hasBody ? ["POST", "PUT", "PATCH"] : ["GET", "POST"];
    return order.find((m) => script.methods.includes(m)) || script.methods[0];
  }

  async function runScript(script, form, output, mode) {
    for (const slot of form.querySelectorAll(".error")) slot.textContent = "";
    const query = new URLSearchParams();
    for (const input of form.querySelectorAll("[data-param]")) {
      const value = fieldValue(input);
      if (value !== "") query.append(input.dataset.param, value);
    }
    const bodyInput = form.querySelector("#body");
    const options = { method: methodFor(script, !!bodyInput), headers: {} };
    if (bodyInput && bodyInput.value.trim()) {
      try { JSON.parse(bodyInput.value); } catch (e) {
        form.querySelector("#body-error").textContent = "This is not valid JSON: " + e.message;
        return;
      }
      options.body = bodyInput.value;
      options.headers["Content-Type"] = "application/json";
    }
    if (mode === "job") options.headers.Prefer = "respond-async";
    const url = script.url + (query.toString() ? "?" + query : "");
    clear(output).append(el("p", { class: "hint", text: "Running…" }));
    let response;
    try { response = await request(url, options); } catch (e) {
      clear(output).append(el("p", { class: "error", text: "The server did not answer: " + e.message }));
      return;
    }
    if (response.status === 202) {
      const job = await response.json();
      location.hash = "#/runs/" + job.id;
      return;
    }
    if (response.status === 400) {
      const body = await response.clone().json().catch(() => null);
      if (body && Array.isArray(body.fields)) showFieldErrors(form, body.fields);
    }
    await showResponse(output, response, script.name);
  }

  function showFieldErrors(form, fields) {
    for (const f of fields) {
      const slot = f.in === "body" ? form.querySelector("#body-error") : form.querySelector("#p-" + CSS.escape(f.name) + "-error");
      const text = (f.in === "body" && f.name ? f.name + ": " : "") + f.message;
      if (slot) slot.textContent = slot.textContent ? slot.textContent + " " + text : text;
    }
    const first = form.querySelector(".error:not(:empty)");
    if (first) first.closest(".field").querySelector("input, select, textarea").focus();
  }

  // ---- showing an answer: table, tree, text or a download ----
  async function showResponse(output, response, name, ownTrace = true) {
    clear(output);
    // A job's result shows the job's trace id in its record, not that of this fetch.
    const trace = ownTrace && response.headers.get("X-Trace-Id");
    output.append(el("p", { class: "status " + (response.ok ? "ok" : "bad") },
      "HTTP " + response.status, trace ? el("span", { class: "trace" }, " · trace id ", el("code", { text: trace })) : null));
    const type = (response.headers.get("Content-Type") || "").toLowerCase();
    const disposition = response.headers.get("Content-Disposition") || "";
    if (response.status === 204) return;
    if (/attachment/i.test(disposition) || !(type.includes("json") || type.startsWith("text/"))) {
      const blob = await response.blob();
      const file = (/filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition) || [])[1] || name + ".out";
      output.append(el("p", {}, el("a", { href: URL.createObjectURL(blob), download: decodeURIComponent(file), class: "download" }, "Download " + decodeURIComponent(file)), " (" + blob.size + " bytes)"));
      return;
    }
    const text = await response.text();
    if (type.includes("json")) {
      let data;
      try { data = JSON.parse(text); } catch (e) { output.append(el("pre", { text })); return; }
      if (Array.isArray(data) && data.length && data.every((r) => r && typeof r === "object" && !Array.isArray(r))) {
        output.append(table(data, name));
      } else {
        output.append(tree(data));
      }
      return;
    }
    output.append(el("pre", { class: "text", text }));
  }

  function cellText(value) {
    return value !== null && typeof value === "object" ? JSON.stringify(value) : value == null ? "" : String(value);
  }

  function table(rows, name) {
    const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))];
    const body = el("tbody");
    let shown = rows;
    const fill = (ordered) => { shown = ordered; body.replaceChildren(...ordered.map((r) => el("tr", {}, columns.map((c) => el("td", { text: cellText(r[c]) }))))); };
    const heads = columns.map((c) => {
      const th = el("th", { scope: "col", "aria-sort": "none" });
      th.append(el("button", { type: "button", class: "sort", onclick: () => {
        const up = th.getAttribute("aria-sort") !== "ascending";
        for (const other of th.parentNode.children) other.setAttribute("aria-sort", "none");
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        fill(rows.slice().sort((a, b) => compare(a[c], b[c]) * (up ? 1 : -1)));
      } }, c));
      return th;
    });
    fill(rows);
    const file = name.replace(/\.py$/, "") + ".csv";
    const download = (event) => { // the rows in the order shown, made when asked for
      const lines = [columns, ...shown.map((r) => columns.map((c) => cellText(r[c])))];
      const csv = lines.map((line) => line.map(csvCell).join(",")).join("\r\n") + "\r\n";
      URL.revokeObjectURL(event.currentTarget.href);
      event.currentTarget.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    };
    return el("div", { class: "result-table" },
      el("p", {}, rows.length + " rows · ", el("a", { href: "#", download: file, class: "download", onclick: download }, "Download CSV")),
      el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, heads)), body)));
  }

  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    return cellText(a).localeCompare(cellText(b), undefined, { numeric: true });
  }

  function csvCell(text) {
    // A cell a spreadsheet would run as a formula is written as text (CSV injection).
    const safe = /^[=+\-@\t\r]/.test(text) ? "'" + text : text;
    return /[",\r\n]/.test(safe) ? '"' + safe.replace(/"/g, '""') + '"' : safe;
  }

  function tree(data) {
    let budget = MAX_TREE_NODES;
    const node = (value) => {
      if (--budget < 0) return el("span", { class: "hint", text: "…" });
      if (value === null || typeof value !== "object") return el("span", { class: "leaf " + typeof value, text: typeof value === "string" ? value : JSON.stringify(value) });
      const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
      return el("ul", { class: "tree" }, entries.map(([k, v]) => el("li", {}, el("span", { class: "key", text: k + ": " }), node(v))));
    };
    return el("div", { class: "json" }, node(data));
  }

  // ---- runs: the history, and one run's page ----
  async function showRuns(more) {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData($("runs-filter"))) {
      if (!value) continue;
      params.set(name, name === "since" || name === "until" ? new Date(value).toISOString() : value);
    }
    if (more && state.runsNext) params.set("cursor", state.runsNext);
    $("runs-error").textContent = "";
    const asked = ++state.runsAsked; // a slower answer to an older question is dropped
    try {
      const page = await json("/_platform/jobs?" + params);
      if (asked !== state.runsAsked) return;
      state.runsNext = page.next;
      $("runs-more").hidden = !page.next;
      const rows = page.jobs.map((job) => el("tr", {},
        el("td", {}, el("a", { href: "#/runs/" + job.id, text: when(job.created_at) })),
        el("td", { text: job.script }), el("td", {}, el("span", { class: "state " + job.state, text: job.state })),
        el("td", { text: job.trigger }), el("td", { text: job.caller || "" }),
        el("td", { text: job.duration_ms != null ? (job.duration_ms / 1000).toFixed(1) + " s" : "" })));
      const target = $("runs-table");
      if (more && target.querySelector("tbody")) target.querySelector("tbody").append(...rows);
      else clear(target).append(rows.length ? el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ["Started", "Script", "State", "Trigger", "Caller", "Took"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, rows))) : el("p", { class: "hint", text: "No runs match." }));
    } catch (e) {
      $("runs-error").textContent = e.response && e.response.status === 401 ? "Sign in with a key to see its runs." : e.message;
    }
  }
  $("runs-filter").addEventListener("submit", (event) => { event.preventDefault(); showRuns(false); });
  $("runs-more").addEventListener("click", () => showRuns(true));

  async function showRun(id) {
    const view = clear($("view-run"));
    const live = { stopped: false, controller: new AbortController() };
    leaveView = () => { live.stopped = true; live.controller.abort(); };
    const url = "/_platform/jobs/" + encodeURIComponent(id);
    let job;
    try { job = await json(url); } catch (e) {
      view.append(el("h1", { text: "Run" }), el("p", { class: "error", text: e.response && e.response.status === 404 ? "No such run, or not one this key may see." : e.message }));
      return;
    }
    const record = el("dl", { class: "record" });
    const progress = el("progress", { max: 1, id: "run-progress", "aria-label": "Progress" });
    const message = el("p", { class: "hint", id: "run-message", "aria-live": "polite" });
    const cancel = el("button", { type: "button", class: "danger", id: "run-cancel" }, "Cancel this run");
    const logs = el("ol", { class: "log", id: "run-log", "aria-label": "Log lines" });
    const result = el("div", { class: "output", id: "run-result" });
    view.append(el("h1", {}, "Run of ", el("code", { text: job.script })),
      el("p", { class: "hint" }, "Link to this run: ", el("code", { text: location.href })),
      record, el("div", { class: "progress" }, progress, message), cancel,
      el("h2", { text: "Log" }), logs, el("h2", { text: "Result" }), result);
    const seen = new Set();
    const addLog = (line) => { // from the events and from /logs: the same line once
      const key = line && line.id != null ? "#" + line.id : JSON.stringify(line);
      if (seen.has(key) || logs.children.length >= MAX_LOG_LINES) return;
      seen.add(key);
      const text = typeof line === "string" ? line : [line.time || line.timestamp || "", line.level || "", line.message || ""].join(" ").trim();
      logs.append(el("li", { text }));
    };
    const setProgress = (p) => {
      if (!p) return;
      if (typeof p.fraction === "number") progress.value = p.fraction;
      if (p.message) message.textContent = p.message;
    };
    const render = (j) => {
      job = j;
      record.replaceChildren(...[["State", j.state], ["Script", j.script], ["Trigger", j.trigger], ["Caller", j.caller || "(no key)"],
        ["Created", when(j.created_at)], ["Started", when(j.started_at)], ["Finished", when(j.finished_at)],
        ["Attempt", j.attempt + " of " + j.attempts], ["Trace id", j.trace_id], ["Error", j.error || ""]]
        .filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v), "data-name": k })]));
      setProgress(j.progress);
      cancel.hidden = FINISHED.includes(j.state);
      progress.parentNode.hidden = FINISHED.includes(j.state) && !j.progress;
    };
    cancel.addEventListener("click", async () => {
      try { render(await json(url, { method: "DELETE" })); } catch (e) { message.textContent = e.message; }
    });
    render(job);
    if (!FINISHED.includes(job.state)) await follow(url, live, render, (partial) => render(Object.assign({}, job, partial)), setProgress, addLog);
    if (live.stopped) return;
    await loadLogs(url, addLog);
    if (!logs.children.length) logs.replaceWith(el("p", { class: "hint", text: "No log lines." }));
    if (job.result) {
      const response = await request(job.result.url);
      await showResponse(result, response, job.script.split("/").pop(), false);
    } else {
      result.append(el("p", { class: "hint", text: "No result (" + job.state + ")." }));
    }
  }

  async function loadLogs(url, addLog) {
    try {
      const body = await json(url + "/logs");
      for (const line of Array.isArray(body) ? body : body.lines || body.logs || []) addLog(line);
    } catch (e) { /* a server without job logs: nothing to add */ }
  }

  // Live updates: the events stream (fetch, so the key travels in a header, never in the
  // URL as EventSource would need), resumed with Last-Event-ID; polling when there is none.
  async function follow(url, live, render, update, setProgress, addLog) {
    let lastId = null;
    for (let attempt = 0; attempt < 20 && !live.stopped; attempt++) {
      let response;
      try {
        const headers = { Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        response = await request(url + "/events", { headers, signal: live.controller.signal });
      } catch (e) { if (live.stopped) return; break; }
      if (!response.ok || !(response.headers.get("Content-Type") || "").includes("text/event-stream")) break;
      const finished = await readEvents(response, live, (event) => {
        if (event.id) lastId = event.id;
        let data = null;
        try { data = JSON.parse(event.data); } catch (e) { data = event.data; }
        if (event.type === "progress") setProgress(data);
        else if (event.type === "log") addLog(Object.assign({ id: event.id != null ? Number(event.id) : null }, data));
        else if (event.type === "state") update(data && typeof data === "object" ? data : { state: data });
      });
      if (finished) return refresh(url, render);
    }
    for (let polls = 0; polls < MAX_POLLS && !live.stopped; polls++) {
      const job = await refresh(url, render);
      if (!job || FINISHED.includes(job.state)) return;
      await new Promise((done) => setTimeout(done, POLL_MS));
    }
  }

  async function refresh(url, render) {
    try { const job = await json(url); render(job); return job; } catch (e) { return null; }
  }

  async function readEvents(response, live, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", event = { type: "message", data: [], id: null }, finished = false;
    while (!live.stopped) {
      let chunk;
      try { chunk = await reader.read(); } catch (e) { return finished; }
      if (chunk.done) return finished;
      buffer += decoder.decode(chunk.value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) {
            const data = event.data.join("\n");
            onEvent({ type: event.type, data, id: event.id });
            if (event.type === "state") {
              try { finished = FINISHED.includes(JSON.parse(data).state); } catch (e) { finished = FINISHED.includes(data); }
            }
          }
          event = { type: "message", data: [], id: null };
        } else if (!line.startsWith(":")) {
          const at = line.indexOf(":");
          const field = at < 0 ? line : line.slice(0, at);
          const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
          if (field === "event") event.type = value;
          else if (field === "data") event.data.push(value);
          else if (field === "id") event.id = value;
        }
      }
    }
    reader.cancel().catch(() => {});
    return finished;
  }

  // ---- schedules ----
  async function showSchedules() {
    const target = clear($("schedules-table"));
    $("schedules-error").textContent = "";
    let listing;
    try { listing = await json("/_platform/schedules"); } catch (e) {
      $("schedules-error").textContent = e.response && e.response.status === 404 ? "This server has no schedules." : e.message;
      return;
    }
    const schedules = Array.isArray(listing) ? listing : listing.schedules || [];
    if (!schedules.length) { target.append(el("p", { class: "hint", text: "No schedules." })); return; }
    const rows = schedules.map((s) => {
      const last = s.last_run || null;
      const path = "/_platform/schedules/" + encodeURIComponent(s.zone) + "/" + String(s.script).replace(/^\/(api\/|admin\/)?/, "").split("/").map(encodeURIComponent).join("/");
      const button = state.may.schedules ? el("button", { type: "button", class: "secondary", "aria-label": (s.paused ? "Resume " : "Pause ") + s.script }, s.paused ? "Resume" : "Pause") : null;
      if (button) button.addEventListener("click", async () => {
        try { await json(path + (s.paused ? "/resume" : "/pause"), { method: "POST" }); await showSchedules(); }
        catch (e) { $("schedules-error").textContent = e.message; }
      });
      return el("tr", { "data-script": s.script },
        el("td", { text: s.script }), el("td", { text: s.schedule + (s.timezone ? " (" + s.timezone + ")" : "") }),
        el("td", { text: s.paused ? "paused" : when(s.next_run) }),
        el("td", {}, !last ? "never" : last.job_id
          ? el("a", { href: "#/runs/" + last.job_id, text: (last.state || last.outcome) + " · " + when(last.scheduled_at || last.scheduled_time) })
          : (last.outcome || "") + " · " + when(last.scheduled_at || last.scheduled_time)),
        el("td", { class: "schedule-state", text: s.paused ? "paused" : "active" }), el("td", {}, button));
    });
    target.append(el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ["Script", "Schedule", "Next run", "Last run", "State", ""].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows))));
  }

  // ---- admin: broken and backed-off scripts, the keys ----
  async function showAdmin() {
    const broken = clear($("admin-broken")), keys = clear($("admin-keys"));
    if (state.may.routes) {
      try {
        const routes = await json("/_platform/routes?detail=1");
        const bad = Object.values(routes).flat().filter((r) => r.state !== "ok");
        broken.append(bad.length ? simpleTable(["Script", "State", "Error"], bad.map((r) => [r.url, r.state, r.error || ""]), "pre")
          : el("p", { class: "hint", text: "Every script loads." }));
      } catch (e) { broken.append(el("p", { class: "error", text: e.message })); }
    } else broken.append(el("p", { class: "hint", text: "This key may not see the scripts' state." }));
    if (state.may.keys) {
      try {
        const listing = await json("/_platform/keys");
        keys.append(simpleTable(["Key", "Owner", "Scopes", "Expires", "Last used"],
          listing.keys.map((k) => [k.id, k.owner, k.scopes.join(" "), k.expired ? "expired" : when(k.expires) || "never", when(k.last_used) || "never"])));
      } catch (e) { keys.append(el("p", { class: "error", text: e.message })); }
    } else keys.append(el("p", { class: "hint", text: "This key may not see the keys." }));
  }

  function simpleTable(headings, rows, lastAs) {
    return el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => el("td", {}, lastAs && i === r.length - 1 ? el("pre", { text: c }) : c)))))));
  }

  // ---- routing: #/scripts[/url], #/runs[/id], #/schedules, #/admin ----
  async function route() {
    if (leaveView) { leaveView(); leaveView = null; }
    const hash = location.hash.replace(/^#/, "") || "/scripts";
    const [, section, ...rest] = hash.split("/");
    for (const view of document.querySelectorAll("main > section")) view.hidden = true;
    if (!session.signedIn()) { $("view-signin").hidden = false; $("key").focus(); return; }
    if (!state.caller) {
      try { await loadScripts(); } catch (e) {
        session.clear();
        $("signin-error").textContent = e.message;
        $("view-signin").hidden = false;
        return;
      }
    }
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.getAttribute("href") === "#/" + section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (section === "runs" && rest.length) { $("view-run").hidden = false; await showRun(decodeURIComponent(rest.join("/"))); }
    else if (section === "runs") { $("view-runs").hidden = false; await showRuns(false); }
    else if (section === "schedules") { $("view-schedules").hidden = false; await showSchedules(); }
    else if (section === "admin") { $("view-admin").hidden = false; await showAdmin(); }
    else {
      $("view-scripts").hidden = false;
      if (rest.length) { await showScript("/" + rest.map(decodeURIComponent).join("/")); $("script-pane").focus(); }
    }
  }
  window.addEventListener("hashchange", route);
  route();
})();
