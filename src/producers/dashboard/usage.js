/* The usage dashboard (served at /admin/usage): reads /admin/usage/api, the dashboard's counterpart of
 * /v1/usage, and draws it with Chart.js, which the app serves itself (no CDN: works offline). */
/* global Chart */
(function () {
  'use strict';
  const DAY_MS = 24 * 3600 * 1000;
  const form = document.getElementById('range');
  const orgSelect = form.elements.namedItem('org');

  const fmt = {
    usd: (n) => '$' + n.toFixed(6),
    int: (n) => Math.round(n).toLocaleString('en-US'),
    pct: (n) => (n * 100).toFixed(1) + '%',
    ms: (n) => n.toFixed(1) + ' ms',
  };
  const isoDay = (d) => d.toISOString().slice(0, 10);

  /** The window from the page's query string (`to` inclusive), default the last 30 days. */
  function initialRange() {
    const q = new URLSearchParams(location.search);
    const today = isoDay(new Date());
    const to = q.get('to') || today;
    const from = q.get('from') || isoDay(new Date(Date.parse(to) - 29 * DAY_MS));
    return { from, to, org: q.get('org') || '' };
  }

  async function api(groupBy, range) {
    // The API's `to` is exclusive: the day after the last day shown.
    const params = new URLSearchParams({ from: range.from, to: isoDay(new Date(Date.parse(range.to) + DAY_MS)), groupBy });
    if (range.org) params.set('org', range.org);
    const res = await fetch('/admin/usage/api?' + params, { credentials: 'same-origin', headers: { accept: 'application/json' } });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.error ? body.error + (body.details ? ': ' + body.details.map((d) => d.path + ' ' + d.message).join(', ') : '') : 'HTTP ' + res.status);
    return body;
  }

  function renderTotal(t) {
    const set = (field, text) => {
      const el = document.querySelector('#total [data-field="' + field + '"]');
      el.textContent = text;
    };
    set('costUsd', fmt.usd(t.costUsd));
    set('jobs', fmt.int(t.jobs));
    set('tokens', fmt.int(t.tokens.input) + ' / ' + fmt.int(t.tokens.output));
    set('p50', fmt.ms(t.durationMs.p50));
    set('p95', fmt.ms(t.durationMs.p95));
    set('cacheHitRate', fmt.pct(t.cacheHitRate));
    // Estimated (Gemini reports no usage for embeddings) and apart from costUsd: the attempts' calls, the org's
    // knowledge ingestion and its search API queries, with the last two's parts.
    const e = t.embedding;
    set('embeddingCostUsd', fmt.usd(e.costUsd));
    set('embeddingCostParts', 'ingest ' + fmt.usd(e.ingest.costUsd) + ' · search ' + fmt.usd(e.search.costUsd));
    set('embeddingTokens', fmt.int(e.tokens));
    set('embeddingTokenParts', 'ingest ' + fmt.int(e.ingest.tokens) + ' · search ' + fmt.int(e.search.tokens));
  }

  // [field, header, cell, estimated]: the embedding columns, as the tiles, are agentq's estimates (Gemini reports no
  // usage for embedding calls) apart from the cost Gemini billed, and their headers say so.
  const COLUMNS = [
    ['jobs', 'Jobs', (g) => fmt.int(g.jobs)],
    ['input', 'Input tokens', (g) => fmt.int(g.tokens.input)],
    ['output', 'Output tokens', (g) => fmt.int(g.tokens.output)],
    ['costUsd', 'Cost (USD)', (g) => fmt.usd(g.costUsd)],
    ['embeddingTokens', 'Embedding tokens', (g) => fmt.int(g.embedding.tokens), true],
    ['embeddingCostUsd', 'Embedding cost (USD)', (g) => fmt.usd(g.embedding.costUsd), true],
    ['cacheHitRate', 'Cache hits', (g) => fmt.pct(g.cacheHitRate)],
    ['p50', 'p50', (g) => fmt.ms(g.durationMs.p50)],
    ['p95', 'p95', (g) => fmt.ms(g.durationMs.p95)],
  ];

  function renderTable(id, title, groups) {
    const table = document.getElementById(id);
    table.replaceChildren();
    const head = table.createTHead().insertRow();
    for (const [field, text, , estimated] of [['key', title], ...COLUMNS]) {
      const th = document.createElement('th');
      th.dataset.field = field;
      th.textContent = text;
      if (estimated) {
        th.className = 'estimated';
        th.title = "Estimated: Gemini reports no usage for embedding calls; ~4 characters a token at the embedding model's price. Not in Cost.";
        const badge = document.createElement('span');
        badge.className = 'badge';
        badge.textContent = 'estimated';
        th.append(' ', badge);
      }
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const g of groups) {
      const row = body.insertRow();
      row.dataset.key = g.key;
      const keyCell = row.insertCell();
      keyCell.textContent = g.key;
      keyCell.dataset.field = 'key';
      for (const [field, , show, estimated] of COLUMNS) {
        const cell = row.insertCell();
        cell.dataset.field = field;
        if (estimated) cell.className = 'estimated';
        cell.textContent = show(g);
      }
    }
    if (groups.length === 0) {
      const cell = body.insertRow().insertCell();
      cell.colSpan = COLUMNS.length + 1;
      cell.textContent = 'No jobs in this window';
    }
  }

  const charts = {};
  function draw(id, type, labels, datasets, opts) {
    if (charts[id]) charts[id].destroy();
    charts[id] = new Chart(document.getElementById(id), {
      type,
      data: { labels, datasets },
      options: Object.assign({ animation: false, maintainAspectRatio: false, plugins: { legend: { display: datasets.length > 1 } } }, opts || {}),
    });
  }

  /** Every day of the window, days without jobs as zero, so gaps read as gaps. */
  function everyDay(range, groups) {
    const byKey = new Map(groups.map((g) => [g.key, g]));
    const days = [];
    for (let t = Date.parse(range.from); t <= Date.parse(range.to); t += DAY_MS) days.push(isoDay(new Date(t)));
    const zero = { jobs: 0, costUsd: 0, tokens: { input: 0, output: 0, total: 0 } };
    return { days, at: (d) => byKey.get(d) || zero };
  }

  async function load(range) {
    document.body.dataset.state = 'loading';
    document.getElementById('error').textContent = '';
    try {
      const [day, agent, model] = await Promise.all([api('day', range), api('agent', range), api('model', range)]);
      const scope = day.scope;
      document.getElementById('scope').textContent = scope.kind === 'all' ? (day.org ? 'operator · org ' + day.org : 'operator · all orgs') : 'org ' + scope.orgId;
      renderTotal(day.total);
      const series = everyDay(range, day.groups);
      draw('chart-day-cost', 'bar', series.days, [{ label: 'Cost (USD)', data: series.days.map((d) => series.at(d).costUsd), backgroundColor: '#3d63dd' }]);
      draw(
        'chart-day-tokens',
        'bar',
        series.days,
        [
          { label: 'Input', data: series.days.map((d) => series.at(d).tokens.input), backgroundColor: '#12b76a' },
          { label: 'Output', data: series.days.map((d) => series.at(d).tokens.output), backgroundColor: '#f79009' },
        ],
        { scales: { x: { stacked: true }, y: { stacked: true } } },
      );
      draw('chart-day-jobs', 'bar', series.days, [{ label: 'Jobs', data: series.days.map((d) => series.at(d).jobs), backgroundColor: '#7a5af8' }], { scales: { y: { ticks: { precision: 0 } } } });
      draw('chart-agent-cost', 'bar', agent.groups.map((g) => g.key), [{ label: 'Cost (USD)', data: agent.groups.map((g) => g.costUsd), backgroundColor: '#3d63dd' }], { indexAxis: 'y' });
      draw('chart-model-cost', 'bar', model.groups.map((g) => g.key), [{ label: 'Cost (USD)', data: model.groups.map((g) => g.costUsd), backgroundColor: '#ee46bc' }], { indexAxis: 'y' });
      renderTable('by-day', 'Day', day.groups);
      renderTable('by-agent', 'Agent', agent.groups);
      renderTable('by-model', 'Model', model.groups);

      const operator = scope.kind === 'all';
      for (const id of ['org-picker', 'org-chart-card', 'org-table-card']) document.getElementById(id).hidden = !operator;
      if (operator) {
        // Every org of the window, whichever one is picked: the picker's choices and the per-org view.
        const orgs = await api('org', Object.assign({}, range, { org: '' }));
        draw('chart-org-cost', 'bar', orgs.groups.map((g) => g.key), [{ label: 'Cost (USD)', data: orgs.groups.map((g) => g.costUsd), backgroundColor: '#0ba5ec' }], { indexAxis: 'y' });
        renderTable('by-org', 'Org', orgs.groups);
        const keep = range.org;
        orgSelect.replaceChildren(new Option('All orgs', ''), ...orgs.groups.map((g) => new Option(g.key, g.key)));
        if (keep && !orgs.groups.some((g) => g.key === keep)) orgSelect.add(new Option(keep, keep));
        orgSelect.value = keep;
      }
      document.body.dataset.state = 'ready';
    } catch (err) {
      document.getElementById('error').textContent = 'Could not load usage: ' + err.message;
      document.body.dataset.state = 'error';
    }
  }

  const start = initialRange();
  form.elements.namedItem('from').value = start.from;
  form.elements.namedItem('to').value = start.to;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const range = { from: form.elements.namedItem('from').value, to: form.elements.namedItem('to').value, org: orgSelect.value };
    const q = new URLSearchParams({ from: range.from, to: range.to });
    if (range.org) q.set('org', range.org);
    history.replaceState(null, '', '?' + q);
    load(range);
  });
  load(start);
})();
