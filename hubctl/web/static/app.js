// The park page (hubctl.web, docs/web.md): reads /api/*, live state by server-sent events.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const fmt = (v, d = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  // times in the site's zone (the config's site.timezone), as the journal and the reports give them
  const local = (ts, seconds) => new Date(ts * 1000).toLocaleString("sv-SE", {
    timeZone: me.timezone, hour12: false, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined });
  let me = null, chart = null, events = null;

  async function api(path, options) {
    const r = await fetch(path, options);
    if (r.status === 401) { showLogin(); throw new Error("401"); }
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }

  function showLogin() {
    if (events) { events.close(); events = null; }
    $("page").hidden = true; $("logout").hidden = true; $("who").textContent = "";
    $("login").hidden = false;
  }

  async function start() {
    const r = await fetch("/api/me");
    if (r.status !== 200) { showLogin(); return; }
    me = await r.json();
    $("login").hidden = true; $("page").hidden = false; $("logout").hidden = false;
    $("title").textContent = me.site_name;
    $("who").textContent = me.manager ? "park manager" : "company " + me.company;
    $("park-tile").hidden = !me.manager; $("quarter-tile").hidden = !me.manager;
    events = new EventSource("/api/events");
    events.onmessage = (e) => render(JSON.parse(e.data));
    await Promise.all([loadChart(), loadMonths()]);
    setInterval(loadChart, 60000);
  }

  function render(s) {
    if (s === null) return;
    document.body.dataset.ts = s.ts;
    $("updated").textContent = local(s.ts, true);
    $("mode").textContent = s.mode; $("mode").className = "big " + s.mode;
    $("down").textContent = s.down.length ? s.down.join(", ") : "none";
    if (s.park) {
      const lim = s.park.limits;
      $("park-power").textContent = fmt(s.park.power_kw);
      $("import-cap").textContent = fmt(lim.import_limit_kw); $("import-source").textContent = lim.import_source;
      $("export-cap").textContent = fmt(lim.export_limit_kw); $("export-source").textContent = lim.export_source;
    }
    const q = s.quarter;
    if (q) {
      $("quarter-start").textContent = "from " + local(q.start_utc, false).slice(11);
      $("quarter-mean").textContent = fmt(q.mean_kw);
      $("quarter-import-cap").textContent = fmt(q.import_cap_kw);
      $("quarter-export-cap").textContent = fmt(q.export_cap_kw);
      $("quarter-covered").textContent = fmt(q.covered_s, 0);
      $("quarter-verdict").textContent = q.over_cap ? "OVER THE CAP" : "within the caps";
      $("quarter-verdict").className = q.over_cap ? "bad" : "ok";
    }
    const body = $("companies").tBodies[0];
    body.textContent = "";
    for (const [id, c] of Object.entries(s.companies)) {
      const tr = body.insertRow(); tr.dataset.company = id;
      const own = c.limits ? fmt(c.limits.import_limit_kw) + " / " + fmt(c.limits.export_limit_kw) : "–";
      // its meter stale on a shared connection: the park meter less the others stands in for it
      const grid = fmt(c.power_kw) + (c.power_from_park_meter ? " (from the park meter)" : "");
      for (const v of [id, grid, fmt(c.pv_kw), fmt(c.battery_kw), fmt(c.soc_pct, 0),
                       fmt(c.battery_setpoint_kw), fmt(c.pv_limit_kw), own]) {
        tr.insertCell().textContent = v;
      }
    }
  }

  async function loadChart() {
    const h = await api("/api/history");
    const names = Object.keys(h.series);
    const data = [h.t, ...names.map((n) => h.series[n])];
    const colors = ["#000", "#c00", "#06c", "#2a2", "#a60", "#909", "#077", "#555"];
    const series = [{}, ...names.map((n, i) => ({
      label: n.replace("company:", ""), stroke: colors[i % colors.length], width: n === "park_kw" ? 2 : 1,
      dash: n.endsWith("cap_kw") ? [6, 4] : undefined,
    }))];
    const width = Math.max(400, $("chart").clientWidth || 900);
    if (chart) chart.destroy();
    const scales = { x: { time: true, range: () => [h.now - 86400, h.now] } };
    const tzDate = (ts) => uPlot.tzDate(new Date(ts * 1000), me.timezone);
    chart = new uPlot({ width, height: 280, series, scales, tzDate, axes: [{}, { label: "kW" }] }, data, $("chart"));
  }

  async function loadMonths() {
    const m = await api("/api/statements");
    $("no-ledger").hidden = m.ledger;
    const sel = $("month"); sel.textContent = "";
    for (const month of m.months) sel.add(new Option(month, month));
    if (m.months.length) { sel.value = m.months[m.months.length - 1]; await loadMonth(sel.value); }
  }

  async function loadMonth(month) {
    const m = await api("/api/statements/" + month);
    $("csv").href = "/api/statements/" + month + ".csv";
    const body = $("statements").tBodies[0]; body.textContent = "";
    for (const s of m.statements) {
      const tr = body.insertRow(); tr.dataset.company = s.company;
      for (const [v, d] of [[s.company, null], [s.import_kwh, 1], [s.export_kwh, 1], [s.shared_in_kwh, 1],
                            [s.shared_out_kwh, 1], [s.supplier_kwh, 1], [s.grid_export_kwh, 1],
                            [s.charged_eur, 2], [s.paid_eur, 2], [s.net_eur, 2]]) {
        tr.insertCell().textContent = d === null ? v : fmt(v, d);
      }
    }
    const k = $("kpis"); k.hidden = !m.kpis; k.tBodies[0].textContent = "";
    if (m.kpis) {
      for (const [name, v] of Object.entries(m.kpis)) {
        const tr = k.tBodies[0].insertRow(); tr.insertCell().textContent = name;
        tr.insertCell().textContent = typeof v === "number" ? fmt(v, 2) : (v === null ? "–" : v);
      }
    }
  }

  $("month").addEventListener("change", (e) => loadMonth(e.target.value));
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify({ token: $("token").value }) });
    $("login-error").hidden = r.ok;
    if (r.ok) { $("token").value = ""; await start(); }
  });
  $("logout").addEventListener("click", async () => { await fetch("/api/logout", { method: "POST" }); showLogin(); });
  start();
})();
