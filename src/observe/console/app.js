// Ferry console, the frame: login, API calls, the hash router, polling, charts, tables and
// the keyboard. Pages live in pages.js and register themselves with Ferry.page(name, render).
// No build step: this file is served as it is.
"use strict";

const Ferry = (() => {
  const POLL_MS = 5000;
  const AUTH_KEY = "ferry-auth";
  const THEME_KEY = "ferry-theme";
  const pages = {};
  const state = {
    auth: sessionStorage.getItem(AUTH_KEY),
    user: null,
    canWrite: false,
    timer: null,
    generation: 0,
    charts: [],
  };

  // --- small DOM helpers ------------------------------------------------------------------

  /** h("tag.class", {attr: v, onclick: f}, ...children): an element. */
  function h(spec, attrs, ...children) {
    const [tag, ...classes] = spec.split(".");
    const el = document.createElement(tag || "div");
    if (classes.length) el.className = classes.join(" ");
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const $ = (sel) => document.querySelector(sel);

  function toast(text, isError) {
    const t = $("#toast");
    t.textContent = text;
    t.className = "toast show" + (isError ? " error" : "");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (t.className = "toast"), 4000);
  }

  // --- formatting -------------------------------------------------------------------------

  function num(n, digits) {
    if (n === undefined || n === null || Number.isNaN(n)) return "–";
    return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits ?? 1 });
  }

  function bytes(n) {
    if (n === undefined || n === null) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    let v = Number(n);
    while (Math.abs(v) >= 1000 && i < units.length - 1) {
      v /= 1000;
      i++;
    }
    return `${v.toLocaleString(undefined, { maximumFractionDigits: 1 })} ${units[i]}`;
  }

  function time(ms) {
    return ms ? new Date(ms).toLocaleString() : "–";
  }

  const enc = encodeURIComponent;

  // --- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body, headers) {
    const h2 = Object.assign(
      { "X-Ferry-Console": "1", Authorization: "Basic " + state.auth },
      headers || {}
    );
    const init = { method, headers: h2, cache: "no-store" };
    if (body !== undefined) {
      h2["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const text = await r.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = text;
      }
    }
    if (r.status === 401 && path !== "/api/whoami") {
      logout("Your session has ended; log in again.");
    }
    if (!r.ok) {
      throw new ApiError(r.status, (data && data.message) || r.statusText);
    }
    return data;
  }

  const get = (path) => api("GET", path);

  /** Runs an action from a button: disables it meanwhile, reports the outcome. */
  async function act(button, what, fn) {
    if (button) button.disabled = true;
    try {
      const out = await fn();
      toast(what);
      return out;
    } catch (e) {
      toast(`${what} failed: ${e.message}`, true);
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  // --- login ------------------------------------------------------------------------------

  function encodeAuth(user, password) {
    const bytes = new TextEncoder().encode(`${user}:${password}`);
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }

  async function login(user, password) {
    state.auth = encodeAuth(user, password);
    try {
      const me = await api("GET", "/api/whoami");
      sessionStorage.setItem(AUTH_KEY, state.auth);
      return me;
    } catch (e) {
      state.auth = null;
      throw e;
    }
  }

  function logout(message) {
    sessionStorage.removeItem(AUTH_KEY);
    state.auth = null;
    state.user = null;
    stopPolling();
    showLogin(message || "");
  }

  function showLogin(message) {
    $("#top").hidden = true;
    $("#page").replaceChildren();
    $("#login").hidden = false;
    $("#login-error").textContent = message;
    $("#login-user").focus();
  }

  function setUser(me) {
    state.user = me;
    const tags = (me.tags || "").split(",");
    state.canWrite = tags.includes("administrator") || tags.includes("management");
    $("#whoami").textContent = `${me.name}${state.canWrite ? "" : " (read-only)"}`;
    $("#login").hidden = true;
    $("#top").hidden = false;
  }

  // --- pages and polling ------------------------------------------------------------------

  function page(name, render) {
    pages[name] = render;
  }

  function stopPolling() {
    clearTimeout(state.timer);
    state.timer = null;
    state.generation++;
    for (const c of state.charts) c.plot.destroy();
    state.charts = [];
  }

  /** Shows the page the hash names; its render returns a refresh function polled every 5 s. */
  async function route() {
    if (!state.user) return;
    stopPolling();
    const generation = state.generation;
    const [name, ...args] = (location.hash.replace(/^#\/?/, "") || "overview")
      .split("/")
      .map(decodeURIComponent);
    const render = pages[name] || pages.overview;
    for (const a of document.querySelectorAll("nav a")) {
      const current = a.getAttribute("href") === `#/${name}`;
      if (current) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    $("#nav").classList.remove("open");
    const root = h("div.page", { "data-page": name });
    $("#page").replaceChildren(root);
    let refresh;
    try {
      refresh = await render(root, ...args);
    } catch (e) {
      root.append(h("p.error", { role: "alert" }, `Could not load this page: ${e.message}`));
      return;
    }
    const tick = async () => {
      if (generation !== state.generation) return;
      try {
        if (refresh) await refresh();
      } catch (e) {
        if (e.status !== 401) toast(`Refresh failed: ${e.message}`, true);
      }
      if (generation === state.generation) state.timer = setTimeout(tick, POLL_MS);
    };
    await tick();
  }

  // --- tables -----------------------------------------------------------------------------

  /**
   * A table: columns are {label, value(row) -> text|Node, num?}; rows are replaced by
   * update(rows). With a filter, an input above it narrows rows by their text.
   */
  function table(columns, options) {
    const opts = options || {};
    const tbody = h("tbody");
    const filter = opts.filter
      ? h("input", {
          type: "search",
          placeholder: "Filter (/)",
          "aria-label": "Filter rows",
          "data-filter": "",
          oninput: () => apply(),
        })
      : null;
    const tableEl = h(
      "table",
      { "aria-label": opts.label || "" },
      h("thead", {}, h("tr", {}, columns.map((c) => h(c.num ? "th.num" : "th", { scope: "col" }, c.label)))),
      tbody
    );
    let last = [];
    function apply() {
      const needle = filter ? filter.value.toLowerCase() : "";
      const rows = last.filter((r) => !needle || JSON.stringify(r).toLowerCase().includes(needle));
      tbody.replaceChildren(
        ...rows.map((r) =>
          h(
            "tr",
            opts.rowKey ? { "data-key": opts.rowKey(r) } : {},
            columns.map((c) => {
              const v = c.value(r);
              return h(c.num ? "td.num" : "td", {}, v instanceof Node ? v : v ?? "–");
            })
          )
        )
      );
      if (!rows.length) {
        tbody.append(h("tr", {}, h("td.muted", { colspan: columns.length }, opts.empty || "Nothing here yet.")));
      }
    }
    const el = h("div", {}, filter, h("div.table-wrap", {}, tableEl));
    return {
      el,
      update(rows) {
        last = rows || [];
        apply();
      },
    };
  }

  // --- charts -----------------------------------------------------------------------------

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  /**
   * A live line chart: series are {label, key}; update(points) takes {key: [[t_ms, v], ...]}
   * (any order) and sets data-last on the chart to the newest value of the first series, which
   * tests read to see the plot move.
   */
  function chart(title, series, options) {
    const opts = options || {};
    const holder = h("div.plot");
    const box = h("figure.chart", { "data-chart": opts.id || title, "aria-label": title }, h("h3", {}, title), holder);
    const colors = ["--chart1", "--chart2", "--chart3", "--chart4"];
    let plot = null;
    function make(width) {
      const fmt = opts.format || ((v) => num(v));
      plot = new uPlot(
        {
          width,
          height: 180,
          scales: { x: { time: true } },
          axes: [
            { stroke: cssVar("--muted"), grid: { stroke: cssVar("--line") } },
            {
              stroke: cssVar("--muted"),
              grid: { stroke: cssVar("--line") },
              size: 60,
              values: (u, vals) => vals.map(fmt),
            },
          ],
          series: [
            {},
            ...series.map((s, i) => ({
              label: s.label,
              stroke: cssVar(colors[i % colors.length]),
              width: 2,
              value: (u, v) => (v === null || v === undefined ? "–" : fmt(v)),
            })),
          ],
        },
        [[], ...series.map(() => [])],
        holder
      );
      state.charts.push({ plot });
    }
    return {
      el: box,
      update(points) {
        if (!plot) {
          if (typeof uPlot === "undefined") return;
          make(Math.max(260, holder.clientWidth || box.clientWidth - 16 || 400));
        }
        const times = new Set();
        for (const s of series) for (const [t] of points[s.key] || []) times.add(t);
        const xs = [...times].sort((a, b) => a - b);
        const data = [xs.map((t) => t / 1000)];
        for (const s of series) {
          const m = new Map(points[s.key] || []);
          data.push(xs.map((t) => (m.has(t) ? m.get(t) : null)));
        }
        plot.setData(data);
        // At least the last 10 minutes across, so a first lone sample does not span years.
        const hi = xs.length ? xs[xs.length - 1] / 1000 : Date.now() / 1000;
        const lo = Math.min(xs.length ? xs[0] / 1000 : hi, hi - 600);
        plot.setScale("x", { min: lo, max: hi });
        const first = points[series[0].key] || [];
        const newest = first.reduce((a, b) => (b[0] > a[0] ? b : a), [0, null]);
        box.dataset.last = newest[1] === null ? "" : String(newest[1]);
        box.dataset.points = String(first.length);
      },
    };
  }

  /** [[t, level]] of a `*_details` object's samples. */
  function levels(details) {
    return ((details && details.samples) || []).map((s) => [s.timestamp, s.sample]);
  }

  /** [[t, per-second growth]] of a counter's cumulative samples (newest first). */
  function rates(details, scale) {
    const samples = ((details && details.samples) || []).slice().sort((a, b) => a.timestamp - b.timestamp);
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = (samples[i].timestamp - samples[i - 1].timestamp) / 1000;
      if (dt > 0) {
        const v = Math.max(0, samples[i].sample - samples[i - 1].sample) / dt;
        out.push([samples[i].timestamp, Math.round((v / (scale || 1)) * 100) / 100]);
      }
    }
    return out;
  }

  // --- theme and keyboard -----------------------------------------------------------------

  function applyTheme(theme) {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem(THEME_KEY, theme);
  }

  function initialTheme() {
    const saved = localStorage.getItem(THEME_KEY);
    if (saved) return saved;
    return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  function onKey(e) {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
    if (e.key === "Escape" && typing) {
      e.target.blur();
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey || !state.user) return;
    const links = [...document.querySelectorAll("nav a")];
    // 1-9 then 0, as the digits sit on the keyboard.
    if (/^[0-9]$/.test(e.key) && links[(Number(e.key) + 9) % 10]) {
      links[(Number(e.key) + 9) % 10].click();
      $("#main").focus();
      e.preventDefault();
    } else if (e.key === "/") {
      const f = document.querySelector("[data-filter]");
      if (f) {
        f.focus();
        e.preventDefault();
      }
    } else if (e.key === "t") {
      toggleTheme();
    }
  }

  function toggleTheme() {
    applyTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark");
    route();
  }

  // --- start ------------------------------------------------------------------------------

  async function start() {
    applyTheme(initialTheme());
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", route);
    $("#theme").addEventListener("click", toggleTheme);
    $("#logout").addEventListener("click", () => logout("Logged out."));
    $("#menu-toggle").addEventListener("click", () => {
      const open = $("#nav").classList.toggle("open");
      $("#menu-toggle").setAttribute("aria-expanded", String(open));
    });
    $("#login-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const user = $("#login-user").value;
      const password = $("#login-password").value;
      try {
        setUser(await login(user, password));
        $("#login-password").value = "";
        route();
      } catch (err) {
        $("#login-error").textContent =
          err.status === 401 || err.status === 403
            ? "Wrong user or password, or the user has no management tag."
            : `Cannot log in: ${err.message}`;
      }
    });
    if (state.auth) {
      try {
        setUser(await api("GET", "/api/whoami"));
        route();
        return;
      } catch (_) {
        sessionStorage.removeItem(AUTH_KEY);
        state.auth = null;
      }
    }
    showLogin("");
  }

  return {
    h,
    num,
    bytes,
    time,
    enc,
    api,
    get,
    act,
    toast,
    page,
    table,
    chart,
    levels,
    rates,
    route,
    start,
    get canWrite() {
      return state.canWrite;
    },
  };
})();

document.addEventListener("DOMContentLoaded", () => Ferry.start());
