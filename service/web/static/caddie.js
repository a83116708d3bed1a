// caddie's pages work without this file; it draws the charts (plotly.js, served by
// caddie) and keeps live parts fresh by polling the REST API (GETs, session cookie).
(function () {
  "use strict";
  const api = document.body.dataset.api || "/api/v1";
  const TERMINAL = (document.body.dataset.terminal || "").split(" ");  // service/core/status.py, via the page
  const plotConfig = { responsive: true, displaylogo: false };

  // A GET answered 503 (the database restarting) is asked again after its Retry-After, a few times.
  async function getJSON(url) {
    for (let attempt = 0; ; attempt++) {
      const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (r.status === 503 && attempt < 5) {
        const wait = Math.min(30, Number(r.headers.get("Retry-After")) || 1);
        await new Promise(function (done) { setTimeout(done, wait * 1000 * (attempt + 1)); });
        continue;
      }
      if (!r.ok) throw new Error(url + ": " + r.status);
      return r.json();
    }
  }

  function badge(status) {
    const s = document.createElement("span");
    s.className = "status status-" + status.toLowerCase();
    s.textContent = status;
    return s;
  }

  // --- charts ------------------------------------------------------------------------------
  // window.caddieCharts: how many charts were drawn and how long it took (the browser tests read it).
  window.caddieCharts = { drawn: 0, ms: null };
  function drawCharts() {
    const divs = document.querySelectorAll(".chart[data-figure]");
    if (!divs.length || typeof Plotly === "undefined") return;
    const t0 = performance.now();
    const pending = [];
    divs.forEach(function (div) {
      const fig = JSON.parse(document.getElementById(div.dataset.figure).textContent);
      pending.push(Plotly.newPlot(div, fig.data, fig.layout, plotConfig));
    });
    Promise.all(pending).then(function () {
      window.caddieCharts = { drawn: divs.length, ms: performance.now() - t0 };
      document.body.dataset.chartsDrawn = String(divs.length);
    });
  }

  function redraw(key, fig) {
    const div = document.getElementById("chart-" + key);
    if (!div || typeof Plotly === "undefined") return;
    // Keep the user's choices (x as wallclock, log scale, zoom) across refreshes.
    const layout = Object.assign({}, fig.layout, { uirevision: "keep" });
    if (div.layout && div.layout.xaxis && div.layout.xaxis.title && div.layout.xaxis.title.text === "wallclock (s)") {
      const byTime = fig.layout.updatemenus[0].buttons[1].args;
      fig.data.forEach(function (t, i) { t.x = byTime[0].x[i]; });
      layout.xaxis = Object.assign({}, layout.xaxis, { title: { text: "wallclock (s)" } });
      layout.updatemenus = div.layout.updatemenus;
    }
    if (div.layout && div.layout.yaxis) layout.yaxis = Object.assign({}, layout.yaxis, { type: div.layout.yaxis.type });
    Plotly.react(div, fig.data, layout, plotConfig);
  }

  // --- a run's page ---------------------------------------------------------------------------
  function followRun(root) {
    const id = root.dataset.runId;
    let status = root.dataset.status;
    let logOffset = Number(root.dataset.logOffset || 0);
    let logDone = root.dataset.logDone === "true";
    const log = document.getElementById("log");

    async function tick() {
      try {
        const run = await getJSON(api + "/runs/" + id);
        if (run.status !== status) {
          // A new state brings results, checks, artifacts: the server renders them.
          if (TERMINAL.includes(run.status) || status === "QUEUED") { window.location.reload(); return; }
          status = run.status;
          const holder = document.getElementById("run-status");
          holder.replaceChildren(badge(status));
        }
        if (!logDone) {
          const piece = await getJSON(api + "/runs/" + id + "/logs?offset=" + logOffset);
          if (piece.data) {
            const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
            log.textContent += piece.data;
            if (atBottom) log.scrollTop = log.scrollHeight;
          }
          logOffset = piece.next_offset;
          logDone = piece.done;
        }
        const figs = await getJSON("/web/runs/" + id + "/charts");
        Object.keys(figs).forEach(function (k) { redraw(k, figs[k]); });
        await refreshEvents();
      } catch (e) {
        console.warn("caddie: refresh failed", e);
      }
      setTimeout(tick, 2000);
    }

    async function refreshEvents() {
      const events = await getJSON(api + "/runs/" + id + "/events");
      const body = document.querySelector("#events tbody");
      if (!body || body.children.length === events.length) return;
      body.replaceChildren.apply(body, events.map(function (e) {
        const tr = document.createElement("tr");
        [e.at.replace("T", " ").slice(0, 19), e.from_status || ""].forEach(function (t) { const td = document.createElement("td"); td.textContent = t; tr.appendChild(td); });
        const to = document.createElement("td"); to.appendChild(badge(e.to_status)); tr.appendChild(to);
        [e.actor, e.reason].forEach(function (t) { const td = document.createElement("td"); td.textContent = t; tr.appendChild(td); });
        return tr;
      }));
    }

    if (log) log.scrollTop = log.scrollHeight;
    if (root.dataset.terminal !== "true") setTimeout(tick, 1500);
  }

  // --- the runs list ------------------------------------------------------------------------
  function followRuns(table) {
    async function tick() {
      try {
        const page = await getJSON(table.dataset.poll);
        page.items.forEach(function (run) {
          const tr = table.querySelector('tr[data-run-id="' + run.id + '"]');
          if (!tr) return;
          const cell = tr.querySelector(".c-status");
          if (cell.textContent.trim() !== run.status) cell.replaceChildren(badge(run.status));
          tr.querySelector(".c-bpb").textContent = run.val_bpb == null ? "—" : run.val_bpb.toFixed(4);
          tr.querySelector(".c-bytes").textContent = run.artifact_bytes == null ? "—" : run.artifact_bytes.toLocaleString("en-US");
        });
      } catch (e) {
        console.warn("caddie: refresh failed", e);
      }
      setTimeout(tick, 3000);
    }
    if (table.querySelector("tr[data-run-id]")) setTimeout(tick, 3000);
    // Ticked runs go to the compare page as one list.
    const form = document.getElementById("compare-form");
    if (form) form.addEventListener("submit", function () {
      const ids = Array.from(form.querySelectorAll('input[name="pick"]:checked')).map(function (c) { return c.value; });
      document.getElementById("compare-runs").value = ids.join(",");
      form.querySelectorAll('input[name="pick"]').forEach(function (c) { c.disabled = true; });
    });
  }

  // --- new run: STACK re-shows the knobs' defaults ------------------------------------------------
  // Each knob whose default differs between stacks carries them (data-stack-defaults); a knob still at
  // the shown stack's default moves to the new one's, a knob the user changed stays. shown-stack tells
  // the server which defaults the form now shows (service/web/routes.py's _spec_from_form).
  function followStack(select, shownStack) {
    select.addEventListener("change", function () {
      const from = shownStack.value, to = select.value;
      document.querySelectorAll("[data-stack-defaults]").forEach(function (el) {
        const defaults = JSON.parse(el.dataset.stackDefaults);
        const atDefault = el.value === defaults[from];
        if (atDefault && el !== select) el.value = defaults[to];
        const shown = el.closest(".field") && el.closest(".field").querySelector(".knob-default");
        if (shown) shown.textContent = defaults[to];
      });
      shownStack.value = to;
    });
  }

  drawCharts();
  const stackSelect = document.getElementById("k-STACK"), shownStack = document.getElementById("shown-stack");
  if (stackSelect && shownStack) followStack(stackSelect, shownStack);
  const run = document.getElementById("run");
  if (run) followRun(run);
  const runs = document.getElementById("runs-table");
  if (runs && runs.dataset.poll) followRuns(runs);
})();
