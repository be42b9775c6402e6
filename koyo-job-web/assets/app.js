/*
 * koyo-job admin page.
 *
 * Loaded by index.html (served by koyo-job-web). It polls the JSON API under
 * `${base}api/` and draws the queues table, the per-queue activity charts, the
 * filtered and paged job list, the job detail panel (with retry / cancel /
 * delete) and the workers table. Plain ES2020, no dependencies.
 *
 * Rules this file keeps:
 * - every string that comes from the server is written with textContent or
 *   setAttribute, never parsed as HTML (job names, errors and args are untrusted);
 * - no inline styles (the CSP forbids them): looks live in app.css, and SVG
 *   shapes are coloured through their class;
 * - refreshing never throws away what the user is looking at: filters, page,
 *   the open detail and the scroll position survive, and a failed refresh keeps
 *   the last data on screen.
 */
'use strict';

(() => {
  const STATES = ['scheduled', 'ready', 'running', 'done', 'failed', 'cancelled'];
  const REFRESH_MS = 2000;
  const ACTIVITY_MS = 10000;
  const MESSAGE_MS = 6000;
  const PAGE_SIZE = 50;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // ---------------------------------------------------------------- config

  function meta(name) {
    const m = document.querySelector(`meta[name="${name}"]`);
    const v = m ? m.getAttribute('content') || '' : '';
    return v.includes('{{') ? '' : v; // placeholder left as is: page opened without the server
  }

  const cfg = {
    base: meta('koyo-base') || './',
    csrf: meta('koyo-csrf'),
    readOnly: meta('koyo-read-only') === 'true',
  };

  // ----------------------------------------------------------------- state

  const state = {
    queue: '',           // queue filter, '' = all
    states: [],          // state filter, [] = all
    before: null,        // cursor of the page shown, null = newest page
    beforeStack: [],     // cursors of the newer pages, to go back
    nextBefore: null,    // cursor of the next older page, null = last page
    detailId: null,      // job shown in the detail panel
    detail: null,        // its last body
    detailGen: 0,        // bumped by each action, so a detail fetched before it is not drawn after it
    busy: false,         // an action is in flight
    lastOk: 0,           // when the last refresh fully succeeded (ms)
    refreshError: null,  // message of the last failed refresh, null when it worked
    message: null,       // {text, error, until}: result of an action, shown for a while
    lastActivity: 0,     // when the activity was last fetched (ms)
    activity: null,      // its last body (charts are redrawn from it when their width changes)
    sigs: {},            // last rendered data per section, to skip identical re-renders
    search: { kind: 'job', text: '' }, // the search box: job name, error text or job id
    time: { field: 'created', range: '', from: '', to: '' }, // the time filter
    selected: new Set(), // ids of the jobs ticked in the list
    selectAll: false,    // "all matching the filter" instead of the ticked ids
    matchCount: null,    // how many jobs matched the filter when "all" was chosen
    bulkOp: null,        // the last bulk operation's status, while it runs and after
    chartRange: '1h',    // the charts' range: 1h, 24h or 7d
  };

  // ------------------------------------------------------------ DOM helpers

  const $ = (id) => document.getElementById(id);

  /** Creates an element; `attrs` values are set with setAttribute, children are nodes or text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      node.setAttribute(k, v === true ? '' : String(v));
    }
  }

  /** Replaces the rows of a table body, unless the data did not change since the last call. */
  function fillBody(key, tbody, data, makeRows) {
    const sig = JSON.stringify(data);
    if (state.sigs[key] === sig) return false;
    state.sigs[key] = sig;
    tbody.replaceChildren(...makeRows());
    return true;
  }

  // ------------------------------------------------------------- formatting

  /** 0.4 → "0.4 s", 192 → "3 m 12 s", 7500 → "2 h 5 m", null → "—". */
  function fmtDuration(secs) {
    if (secs === null || secs === undefined || !Number.isFinite(secs)) return '—';
    const s = Math.max(0, secs);
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.floor(s)} s`;
    if (s < 3600) {
      const m = Math.floor(s / 60), r = Math.floor(s % 60);
      return r ? `${m} m ${r} s` : `${m} m`;
    }
    if (s < 86400) {
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
      return m ? `${h} h ${m} m` : `${h} h`;
    }
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    return h ? `${d} d ${h} h` : `${d} d`;
  }

  /** "3 m ago", "in 5 m", "just now" for an RFC 3339 timestamp; "—" for null. */
  function fmtRelative(iso) {
    if (!iso) return '—';
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return iso;
    const diff = (t - Date.now()) / 1000;
    const a = Math.abs(diff);
    if (a < 1.5) return 'just now';
    let text;
    if (a < 60) text = `${Math.round(a)} s`;
    else if (a < 3600) text = `${Math.floor(a / 60)} m`;
    else if (a < 86400) text = `${Math.floor(a / 3600)} h`;
    else text = `${Math.floor(a / 86400)} d`;
    return diff < 0 ? `${text} ago` : `in ${text}`;
  }

  /** "2026-11-29 03:40:56 UTC" (seconds precision, for reading). */
  function fmtUtc(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return iso;
    return new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  }

  function firstLine(text) {
    const line = String(text).split('\n').find((l) => l.trim() !== '') || '';
    return line.length > 300 ? `${line.slice(0, 300)}…` : line;
  }

  /** Smallest of 1, 2, 5, 10, 20, 50… that is >= v (so the axis label is a round number). */
  function niceCeil(v) {
    if (v <= 1) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  const sum = (xs) => (xs || []).reduce((a, b) => a + b, 0);

  /** A <span> showing a timestamp relative to now; the tick keeps its text current. */
  function relTime(iso) {
    if (!iso) return el('span', { class: 'faint' }, '—');
    return el('time', { datetime: iso, title: iso, 'data-rel': iso }, fmtRelative(iso));
  }

  function pill(status) {
    return el('span', { class: `pill pill-${status}` }, status);
  }

  // -------------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  /** Fetches `${base}api/${path}`; resolves with the JSON body, rejects with ApiError. */
  async function api(path, method = 'GET', body = null) {
    const init = { method, cache: 'no-store', credentials: 'same-origin', headers: { accept: 'application/json' } };
    if (method !== 'GET') {
      init.headers['x-koyo-csrf'] = cfg.csrf;
      init.headers['content-type'] = 'application/json';
      if (method === 'POST') init.body = body === null ? '{}' : JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(`${cfg.base}api/${path}`, init);
    } catch (_) {
      throw new ApiError('cannot reach the server', 0);
    }
    let answer = null;
    try {
      answer = await res.json();
    } catch (_) {
      answer = null;
    }
    if (!res.ok) {
      const msg = answer && typeof answer.error === 'string' ? answer.error : `HTTP ${res.status} ${res.statusText}`.trim();
      throw new ApiError(msg, res.status);
    }
    if (answer === null) throw new ApiError('the server sent a response that is not JSON', res.status);
    return answer;
  }

  // ------------------------------------------------------------ status line

  function showMessage(text, error = false) {
    state.message = { text, error, until: Date.now() + MESSAGE_MS };
    renderStatus();
  }

  function renderStatus() {
    const line = $('status-line');
    const now = Date.now();
    let text, error = false;
    const ago = state.lastOk ? `${fmtDuration((now - state.lastOk) / 1000).replace(/\.\d/, '')} ago` : null;
    if (state.message && state.message.until > now) {
      ({ text, error } = state.message);
    } else if (state.refreshError) {
      text = `refresh failed: ${state.refreshError} — ${ago ? `showing data from ${ago}` : 'no data yet'}`;
      error = true;
    } else if (ago) {
      text = `updated ${ago}`;
    } else {
      text = 'loading…';
    }
    if (line.textContent !== text) {
      line.textContent = text;
      line.title = text; // the line is cut with an ellipsis on narrow screens
    }
    if (error) line.setAttribute('data-error', '');
    else line.removeAttribute('data-error');
  }

  /** Once a second: relative times and the status line. */
  function tick() {
    for (const node of document.querySelectorAll('[data-rel]')) {
      const t = fmtRelative(node.getAttribute('data-rel'));
      if (node.textContent !== t) node.textContent = t;
    }
    for (const node of document.querySelectorAll('[data-since]')) {
      const t = fmtDuration((Date.now() - Number(node.getAttribute('data-since'))) / 1000);
      if (node.textContent !== t) node.textContent = t;
    }
    renderStatus();
  }

  // ----------------------------------------------------------------- queues

  function renderQueues(queues) {
    state.queueLimits = Object.fromEntries(queues.map((q) => [q.queue, q.limits]));
    $('queues-empty').hidden = queues.length > 0;
    fillBody('queues', $('queues').tBodies[0], queues, () => queues.map(queueRow));
    updateQueueFilter(queues.map((q) => q.queue));
  }

  function queueRow(q) {
    const cells = STATES.map((s) => {
      const n = q[s] || 0;
      const cls = n === 0 ? 'num zero' : `num count-${s}`;
      return el('td', { 'data-state': s, class: cls, title: `${q.queue}: ${n} ${s} — click to list them` }, n);
    });
    const paused = q.paused_at !== null && q.paused_at !== undefined;
    const pausedTag = paused
      ? el('span', { class: 'tag paused-tag', title: `paused ${q.paused_at}${q.paused_by ? ` by ${q.paused_by}` : ''}: workers claim none of its jobs` }, 'paused')
      : null;
    const toggle = cfg.readOnly ? null : el('button', {
      type: 'button', class: 'btn btn-small', 'data-toggle-queue': paused ? 'resume' : 'pause',
      title: paused ? `let workers claim ${q.queue}'s jobs again` : `stop every worker claiming ${q.queue}'s jobs`,
    }, paused ? 'Resume' : 'Pause');
    return el('tr', { 'data-queue': q.queue, 'data-paused': paused ? 'true' : 'false', class: paused ? 'paused' : null },
      el('th', { scope: 'row', class: 'col-name', title: `list the jobs of ${q.queue}` }, q.queue, pausedTag ? ' ' : null, pausedTag),
      ...cells,
      el('td', { 'data-lag': true, class: q.lag_secs === null || q.lag_secs === undefined ? 'num zero' : 'num' },
        fmtDuration(q.lag_secs)),
      el('td', { 'data-limits': true, class: 'col-limits' }, el('span', { class: 'limits-text' }, describeLimits(q.limits)),
        cfg.readOnly ? null : ' ',
        cfg.readOnly ? null : el('button', {
          type: 'button', class: 'btn btn-small', 'data-limits-queue': q.queue,
          title: `set how many of ${q.queue}'s jobs may run at once, and start per period, across every worker`,
        }, 'Limits')),
      el('td', { class: 'col-action' }, toggle));
  }

  /** `≤ 5 running · ≤ 100 starts / 1m`, or `none`. */
  function describeLimits(limits) {
    const parts = [];
    if (limits && limits.max_running) parts.push(`≤ ${limits.max_running} running`);
    if (limits && limits.rate_limit) parts.push(`≤ ${limits.rate_limit} starts / ${fmtDuration(limits.rate_period_secs)}`);
    return parts.length ? parts.join(' · ') : 'none';
  }

  /** Reads `N/DURATION` (30s, 15m, 12h, 7d) into [N, seconds]; null if it is not that. */
  function parseRate(text) {
    const m = /^\s*(\d+)\s*\/\s*(\d+)\s*(s|m|h|d)\s*$/.exec(text);
    if (!m) return null;
    return [Number(m[1]), Number(m[2]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[3]]];
  }

  /** Asks for a queue's limits (empty: none) and stores them. */
  async function editLimits(queue, current) {
    if (state.busy) return;
    const now = current || {};
    const running = window.prompt(`${queue}: at most how many jobs running at once, across every worker? (empty: no limit)`,
      now.max_running ? String(now.max_running) : '');
    if (running === null) return;
    const rate = window.prompt(`${queue}: at most how many starts per period, as N/DURATION (e.g. 100/1m)? (empty: no limit)`,
      now.rate_limit ? `${now.rate_limit}/${Math.round(now.rate_period_secs)}s` : '');
    if (rate === null) return;
    const body = { max_running: null, rate_limit: null, rate_period_secs: null };
    if (running.trim() !== '') {
      if (!/^\s*\d+\s*$/.test(running)) { showMessage(`not a number of jobs: ${running}`, true); return; }
      body.max_running = Number(running);
    }
    if (rate.trim() !== '') {
      const parsed = parseRate(rate);
      if (!parsed) { showMessage(`not N/DURATION (e.g. 100/1m): ${rate}`, true); return; }
      [body.rate_limit, body.rate_period_secs] = parsed;
    }
    state.busy = true;
    try {
      const res = await api(`queues/${encodeURIComponent(queue)}/limits`, 'POST', body);
      showMessage(`limits of ${queue}: ${describeLimits(res.limits)}`);
    } catch (e) {
      showMessage(`limits of ${queue} failed: ${e.message}`, true);
    } finally {
      state.busy = false;
      refreshNow();
    }
  }

  /** Pauses or resumes a queue from its row's button, after the operator confirms a pause. */
  async function toggleQueue(queue, kind) {
    if (state.busy) return;
    if (kind === 'pause' && !window.confirm(`Pause ${queue}? No worker will start its jobs until it is resumed; running jobs finish.`)) return;
    state.busy = true;
    try {
      await api(`queues/${encodeURIComponent(queue)}/${kind}`, 'POST');
      showMessage(kind === 'pause' ? `queue ${queue} paused` : `queue ${queue} resumed`);
    } catch (e) {
      showMessage(`${kind} ${queue} failed: ${e.message}`, true);
    } finally {
      state.busy = false;
      refreshNow();
    }
  }

  /** Keeps the queue <select> in step with the known queues, without touching the chosen value. */
  function updateQueueFilter(names) {
    const select = $('filter-queue');
    const wanted = [...new Set([...names, state.queue].filter(Boolean))].sort();
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join('\n') === wanted.join('\n')) return;
    select.replaceChildren(el('option', { value: '' }, 'All queues'), ...wanted.map((n) => el('option', { value: n }, n)));
    select.value = state.queue;
  }

  function onQueuesClick(ev) {
    const row = ev.target.closest('tr[data-queue]');
    if (!row) return;
    const limits = ev.target.closest('button[data-limits-queue]');
    if (limits) {
      const queue = row.getAttribute('data-queue');
      editLimits(queue, (state.queueLimits || {})[queue]);
      return;
    }
    const toggle = ev.target.closest('button[data-toggle-queue]');
    if (toggle) {
      toggleQueue(row.getAttribute('data-queue'), toggle.getAttribute('data-toggle-queue'));
      return;
    }
    const cell = ev.target.closest('td[data-state]');
    setFilters(row.getAttribute('data-queue'), cell ? [cell.getAttribute('data-state')] : []);
    $('jobs-section').scrollIntoView({ behavior: 'smooth', block: 'start' });
  }

  // ----------------------------------------------------------------- charts

  // Geometry of one chart; the width follows the figure (320 px or a little more), the rest is fixed.
  const CH = { h: 100, top: 16, bottom: 82, minW: 260, maxW: 520 };

  /** Draws one figure per queue. Also called when #charts changes width, with the last data. */
  function renderCharts(activity) {
    state.activity = activity;
    const queues = activity.queues || [];
    const box = $('charts');
    box.classList.remove('loading');
    $('charts-hint').textContent = rangeText(activity).hint;
    $('charts-empty').hidden = queues.length > 0;
    const sig = `${box.clientWidth}:${JSON.stringify(activity)}`;
    if (state.sigs.charts === sig) return;
    state.sigs.charts = sig;
    const figures = queues.map((q) => chartFigure(q, activity));
    box.replaceChildren(...figures);
    // The SVGs are drawn at the size their figure got (one layout pass), so text never scales.
    figures.forEach((fig, i) => fig.insertBefore(chartSvg(queues[i], activity, chartWidth(fig)), fig.lastChild));
  }

  function chartWidth(fig) {
    const cs = getComputedStyle(fig);
    const w = fig.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    return Math.round(Math.min(CH.maxW, Math.max(CH.minW, w || 320)));
  }

  function watchChartWidth() {
    if (!('ResizeObserver' in window)) return;
    let last = 0;
    new ResizeObserver((entries) => {
      const w = Math.round(entries[0].contentRect.width);
      if (w !== last && state.activity) renderCharts(state.activity);
      last = w;
    }).observe($('charts'));
  }

  function chartFigure(q, activity) {
    const done = sum(q.completed), failed = sum(q.failed);
    const caption = el('figcaption', null,
      el('strong', null, q.queue),
      el('span', { class: 'chart-totals' }, `${done} completed · `,
        el('span', { class: failed ? 'count-failed' : null }, `${failed} failed`), ` ${rangeText(activity).last}`));
    const legend = el('ul', { class: 'legend' },
      el('li', null, el('span', { class: 'swatch swatch-done' }), 'completed'),
      el('li', null, el('span', { class: 'swatch swatch-failed' }), 'failed'),
      el('li', null, el('span', { class: 'swatch swatch-backlog' }), 'ready backlog'));
    return el('figure', { 'data-queue': q.queue, class: 'chart' }, caption, legend);
  }

  /** Bars (completed, failed stacked on top) on the left scale, the ready backlog as a line on its own. */
  function chartSvg(q, activity, w) {
    const n = activity.buckets || (q.completed || []).length || 60;
    const step = activity.step_secs || 60;
    const start = Date.parse(activity.start);
    const completed = q.completed || [], failed = q.failed || [], backlog = q.backlog || [];
    const barMax = niceCeil(Math.max(0, ...completed.map((c, i) => c + (failed[i] || 0))));
    const backlogMax = niceCeil(Math.max(0, ...backlog));
    const { h, top, bottom } = CH;
    const left = 2, right = w - 2;
    const slot = (right - left) / n, barW = Math.max(1, slot * 0.72);
    const y = (v, max) => bottom - (v / max) * (bottom - top);

    const root = svg('svg', {
      viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: 'img',
      'aria-label': `${q.queue}: ${sum(completed)} completed and ${sum(failed)} failed ${rangeText(activity).last}`,
    });
    root.append(
      svg('line', { class: 'grid-line', x1: left, x2: right, y1: top, y2: top }),
      svg('line', { class: 'axis-line', x1: left, x2: right, y1: bottom, y2: bottom }),
      svg('text', { class: 'axis-label', x: left, y: top - 5 }, `${barMax} ${rangeText(activity).per}`),
      svg('text', { class: 'axis-label backlog-label', x: right, y: top - 5, 'text-anchor': 'end' }, `${backlogMax} ready`),
      svg('text', { class: 'axis-label', x: left, y: h - 3 }, rangeText(activity).span),
      svg('text', { class: 'axis-label', x: right, y: h - 3, 'text-anchor': 'end' }, 'now'));

    const bars = svg('g', { class: 'bars' });
    const hits = svg('g', { class: 'hits' });
    for (let i = 0; i < n; i++) {
      const x = left + i * slot + (slot - barW) / 2;
      const c = completed[i] || 0, f = failed[i] || 0;
      if (c > 0) bars.append(svg('rect', { class: 'bar-done', x, width: barW, y: y(c, barMax), height: bottom - y(c, barMax) }));
      if (f > 0) bars.append(svg('rect', { class: 'bar-failed', x, width: barW, y: y(c + f, barMax), height: y(c, barMax) - y(c + f, barMax) }));
      const when = Number.isNaN(start) ? `minute ${i + 1}` : fmtUtc(new Date(start + i * step * 1000).toISOString()).slice(step >= 3600 ? 5 : 11, 16);
      hits.append(svg('rect', { x: left + i * slot, width: slot, y: top, height: bottom - top },
        svg('title', null, `${when} UTC — ${c} completed, ${f} failed, ${backlog[i] || 0} ready`)));
    }
    const points = backlog.map((v, i) => `${(left + (i + 0.5) * slot).toFixed(1)},${y(v, backlogMax).toFixed(1)}`);
    root.append(bars);
    if (barMax === 1 && backlogMax === 1 && sum(completed) + sum(failed) + sum(backlog) === 0) {
      root.append(svg('text', { class: 'idle-label', x: w / 2, y: (top + bottom) / 2 + 4, 'text-anchor': 'middle' }, `no activity ${rangeText(activity).last}`));
    }
    if (points.length) root.append(svg('polyline', { class: 'backlog-line', points: points.join(' ') }));
    root.append(hits);
    return root;
  }

  // ------------------------------------------------------------------- jobs

  function jobsQuery() {
    const p = new URLSearchParams(criteria());
    p.set('limit', String(PAGE_SIZE));
    if (state.before !== null) p.set('before', String(state.before));
    return `jobs?${p}`;
  }

  async function loadJobs() {
    const query = jobsQuery();
    const data = await api(query);
    if (query !== jobsQuery()) return; // filters or page changed meanwhile; a newer request follows
    renderJobs(data);
  }

  function renderJobs(data) {
    const jobs = data.jobs || [];
    state.nextBefore = data.next_before ?? null;
    $('jobs-empty').hidden = jobs.length > 0;
    $('jobs').classList.remove('loading');
    // A running job's duration grows at every refresh; its cell counts on by itself (tick).
    fillBody('jobs', $('jobs').tBodies[0], jobs.map(withoutOpenDuration), () => jobs.map(jobRow));
    markSelectedRow();
    syncChecks();
    renderPager();
  }

  function jobRow(j) {
    const error = j.last_error ? firstLine(j.last_error) : null;
    return el('tr', { 'data-job-id': j.id, tabindex: 0 },
      el('td', { class: 'col-check' }, el('input', {
        type: 'checkbox', 'data-select': j.id, 'aria-label': `Select job ${j.id}`,
        checked: state.selectAll || state.selected.has(j.id), disabled: state.selectAll,
      })),
      el('td', { 'data-col': 'id', class: 'num' }, j.id),
      el('td', { 'data-col': 'job', class: 'clip', title: j.job }, ...jobName(j.job)),
      el('td', { 'data-col': 'queue', class: 'clip', title: j.queue }, j.queue),
      el('td', { 'data-col': 'status' }, pill(j.status)),
      el('td', { 'data-col': 'attempts', class: 'num' }, `${j.attempts}/${j.max_attempts}`),
      el('td', { 'data-col': 'scheduled' }, relTime(j.scheduled_at)),
      el('td', { 'data-col': 'finished' }, relTime(j.finished_at)),
      el('td', { 'data-col': 'duration', class: 'num' }, durationField(j.duration_secs, j.status === 'running')),
      el('td', { 'data-col': 'error', class: 'clip error-text', title: j.last_error ? j.last_error.slice(0, 2000) : null },
        error === null ? el('span', { class: 'faint' }, '—') : error));
  }

  /** A duration; one still running (`open`) counts on, once a second, from when it was read. */
  function durationField(secs, open) {
    if (secs === null || secs === undefined) return el('span', { class: 'faint' }, '—');
    if (!open) return fmtDuration(secs);
    return el('span', { 'data-since': String(Date.now() - secs * 1000) }, fmtDuration(secs));
  }

  /** A job or attempt for comparing with an earlier read: an open duration left out. */
  function withoutOpenDuration(x) {
    return x.status === 'running' || x.outcome === 'running' ? { ...x, duration_secs: null } : x;
  }

  /** "app::mail::send" → a muted "app::mail::" and the plain "send" (the part that tells jobs apart). */
  function jobName(name) {
    const cut = name.lastIndexOf('::');
    if (cut <= 0) return [name];
    return [el('span', { class: 'job-module' }, name.slice(0, cut + 2)), name.slice(cut + 2)];
  }

  function markSelectedRow() {
    for (const row of $('jobs').tBodies[0].rows) {
      row.classList.toggle('selected', row.getAttribute('data-job-id') === String(state.detailId));
    }
  }

  function renderPager() {
    $('newer').disabled = state.before === null;
    $('older').disabled = state.nextBefore === null;
    const page = state.before === null ? 1 : state.beforeStack.length + 1;
    $('page-info').textContent = page === 1 ? 'newest first' : `page ${page}, newest first`;
  }

  function onJobsClick(ev) {
    if (onSelectClick(ev)) return;
    const row = ev.target.closest('tr[data-job-id]');
    if (row) chooseJob(Number(row.getAttribute('data-job-id')));
  }

  function onJobsKey(ev) {
    if (ev.key !== 'Enter' && ev.key !== ' ') return;
    if (ev.target.closest('input')) return; // the checkbox handles its own keys
    const row = ev.target.closest('tr[data-job-id]');
    if (!row) return;
    ev.preventDefault();
    chooseJob(Number(row.getAttribute('data-job-id')));
  }

  function chooseJob(id) {
    if (location.hash === `#job/${id}`) openDetail(id);
    else location.hash = `job/${id}`; // hashchange opens it
  }

  function goPage(older) {
    if (older) {
      if (state.nextBefore === null) return;
      state.beforeStack.push(state.before);
      state.before = state.nextBefore;
    } else {
      if (state.before === null) return;
      state.before = state.beforeStack.length ? state.beforeStack.pop() : null;
    }
    reloadJobs();
    if ($('jobs-section').getBoundingClientRect().top < 0) $('jobs-section').scrollIntoView({ block: 'start' });
  }

  function readFilters() {
    state.queue = $('filter-queue').value;
    state.states = [...document.querySelectorAll('input[name="state"]:checked')].map((i) => i.value);
    readSearchAndTime();
    clearSelection();
    state.before = null;
    state.beforeStack = [];
    $('filter-reset').hidden = !Object.keys(criteria()).length;
    reloadJobs();
  }

  function setFilters(queue, states) {
    state.queue = queue;
    updateQueueFilter([...$('filter-queue').options].slice(1).map((o) => o.value));
    $('filter-queue').value = queue;
    for (const box of document.querySelectorAll('input[name="state"]')) box.checked = states.includes(box.value);
    readFilters();
  }

  /** The list changed shape: keep the old rows (dimmed) until the new page arrives. */
  function reloadJobs() {
    state.nextBefore = null;
    renderPager();
    $('jobs').classList.add('loading');
    refreshNow();
  }

  // ----------------------------------------------------------------- detail

  /** Shows job `id`; the panel appears once its data is there. */
  async function openDetail(id) {
    if (state.detailId !== id) $('job-detail').classList.add('loading');
    state.detailId = id;
    markSelectedRow();
    try {
      await loadDetail();
    } catch (e) {
      try {
        detailFailed(id, e);
      } catch (_) {
        showMessage(`cannot load job ${id}: ${e.message}`, true);
      }
    }
  }

  /** Fetches the open job; an answer that an action or another job overtook is dropped. */
  async function loadDetail() {
    const id = state.detailId, gen = state.detailGen;
    if (id === null) return;
    const body = await api(`jobs/${id}`);
    if (state.detailId === id && state.detailGen === gen) renderDetail(body);
  }

  /** A job that does not exist closes the panel; other failures are rethrown (the panel keeps its data). */
  function detailFailed(id, e) {
    if (state.detailId !== id) return;
    if (e.status === 404 || e.status === 400) {
      closeDetail();
      showMessage(`job ${id}: ${e.message}`, true);
      return;
    }
    throw e;
  }

  function renderDetail(d) {
    const panel = $('job-detail');
    panel.classList.remove('loading');
    const sig = JSON.stringify({ ...d, history: (d.history || []).map(withoutOpenDuration) });
    state.detail = d;
    if (state.sigs.detail !== sig || panel.hidden) {
      state.sigs.detail = sig;
      fillDetail(d);
    }
    panel.setAttribute('data-job-id', String(d.id));
    panel.hidden = false;
    document.body.classList.add('has-detail');
    renderActions(d.actions || {});
  }

  function fillDetail(d) {
    $('detail-id').textContent = String(d.id);
    const status = $('detail-status');
    status.textContent = d.status;
    status.className = `pill pill-${d.status}`;
    $('detail-job').textContent = d.job;
    $('detail-queue').textContent = d.queue;
    $('detail-priority').textContent = String(d.priority);
    $('detail-attempts').textContent = `${d.attempts}/${d.max_attempts}`;
    $('detail-worker').replaceChildren(d.worker_id === null || d.worker_id === undefined
      ? el('span', { class: 'faint' }, '—') : `worker ${d.worker_id}`);
    for (const f of ['created', 'scheduled', 'started', 'finished']) $(`detail-${f}`).replaceChildren(timeField(d[`${f}_at`]));
    // Shown only when set: a unique job's key, and who asked to cancel it while it ran.
    for (const [cls, value] of [['detail-unique', d.unique_key], ['detail-cancel', d.cancel_requested_by]]) {
      for (const node of document.querySelectorAll(`.${cls}`)) node.hidden = !value;
      $(cls).textContent = value || '';
    }
    fillArgs(d.args || {});
    fillHistory(d.history || [], d.history_dropped || 0);
    $('detail-error').replaceChildren(d.last_error
      ? el('pre', { class: 'error-pre' }, d.last_error)
      : el('p', { class: 'note' }, el('em', null, 'No error recorded.')));
  }

  /** Colours of the outcomes that are not job states. */
  const OUTCOME_PILL = { retry: 'failed', lost: 'failed', 'given back': 'cancelled', 'not run': 'scheduled' };

  /** The job's attempts, oldest first: each with its worker, start, end, duration, outcome and error. */
  function fillHistory(history, dropped) {
    $('detail-history-note').textContent = dropped > 0
      ? `${dropped} earlier ${dropped === 1 ? 'attempt' : 'attempts'} not kept` : '';
    if (!history.length) {
      $('detail-history').replaceChildren(el('li', { class: 'note' }, el('em', null, 'Not started yet.')));
      return;
    }
    $('detail-history').replaceChildren(...history.map(attemptItem));
  }

  function attemptItem(a) {
    const open = a.outcome === 'running';
    const worker = a.worker_id === null || a.worker_id === undefined ? null
      : `worker ${a.worker_id}${a.hostname ? ` on ${a.hostname}` : ''}`;
    const start = a.started_at ? fmtUtc(a.started_at) : null;
    let end = open ? 'now' : (a.ended_at ? fmtUtc(a.ended_at) : '?');
    if (start && end.slice(0, 11) === start.slice(0, 11)) end = end.slice(11); // the same day: its time
    const span = start ? [start, ' → ', end] : ['—'];
    return el('li', { class: `attempt attempt-${OUTCOME_PILL[a.outcome] || a.outcome}`, 'data-attempt': a.attempt, 'data-outcome': a.outcome },
      el('div', { class: 'attempt-head' },
        el('span', { class: 'attempt-no tnum' }, `#${a.attempt}`),
        el('span', { class: `pill pill-${OUTCOME_PILL[a.outcome] || a.outcome}` }, a.outcome),
        el('span', { class: 'attempt-duration tnum' }, durationField(a.duration_secs, open)),
        worker === null ? null : el('span', { class: 'attempt-worker', title: worker }, worker)),
      el('div', { class: 'attempt-time mono' }, ...span),
      a.error ? el('div', { class: 'attempt-error error-text', title: a.error.slice(0, 2000) }, firstLine(a.error)) : null);
  }

  function timeField(iso) {
    if (!iso) return el('span', { class: 'faint' }, '—');
    return el('span', { class: 'time-field' },
      el('time', { datetime: iso, title: iso, 'data-rel': iso }, fmtRelative(iso)),
      el('span', { class: 'utc' }, fmtUtc(iso)));
  }

  function fillArgs(args) {
    $('detail-args-size').textContent = Number.isFinite(args.bytes) ? `${args.bytes} bytes` : '';
    $('detail-args').replaceChildren(typeof args.display === 'string'
      ? el('pre', { class: 'args-pre' }, args.display)
      : el('p', { class: 'note' }, el('em', null, args.note || 'No display available.')));
  }

  function renderActions(actions) {
    let any = false;
    for (const kind of ['retry', 'cancel', 'delete']) {
      const b = $(kind);
      b.hidden = !actions[kind];
      b.disabled = state.busy;
      any = any || actions[kind];
    }
    const note = $('detail-no-actions');
    note.hidden = any;
    note.textContent = cfg.readOnly ? 'Read-only: no actions.' : 'No action applies to a job in this state.';
  }

  /** Hides the panel; `clearHash` also drops `#job/N` from the URL (without a new history entry). */
  function closeDetail(clearHash = true) {
    state.detailId = null;
    state.detail = null;
    state.sigs.detail = null;
    const panel = $('job-detail');
    panel.hidden = true;
    panel.classList.remove('loading');
    panel.removeAttribute('data-job-id');
    document.body.classList.remove('has-detail');
    markSelectedRow();
    if (clearHash && parseHash() !== null) history.replaceState(null, '', location.pathname + location.search);
  }

  const ACTION_TEXT = {
    retry: { path: (id) => [`jobs/${id}/retry`, 'POST'], done: (id) => `job ${id} queued for retry` },
    cancel: { path: (id) => [`jobs/${id}/cancel`, 'POST'], done: (id) => `job ${id} cancelled` },
    delete: { path: (id) => [`jobs/${id}`, 'DELETE'], done: (id) => `job ${id} deleted` },
  };

  async function runAction(kind) {
    const d = state.detail;
    if (!d || state.busy) return;
    const id = d.id;
    if (kind === 'delete' && !window.confirm(`Delete job ${id} (${d.job})? This cannot be undone.`)) return;
    state.busy = true;
    state.detailGen += 1;
    renderActions(d.actions || {});
    try {
      const body = await api(...ACTION_TEXT[kind].path(id));
      // A running job's cancel is a request: its worker stops it within about a second.
      showMessage(kind === 'cancel' && body && body.status === 'running'
        ? `cancel of job ${id} requested: its worker stops it` : ACTION_TEXT[kind].done(id));
      if (kind === 'delete') closeDetail();
      else if (state.detailId === id && body && body.id === id) renderDetail(body);
    } catch (e) {
      showMessage(`${kind} job ${id} failed: ${e.message}`, true);
    } finally {
      state.busy = false;
      if (state.detail) renderActions(state.detail.actions || {});
      refreshNow();
    }
  }

  function parseHash() {
    const m = /^#job\/(\d+)$/.exec(location.hash);
    return m ? Number(m[1]) : null;
  }

  function onHashChange() {
    const id = parseHash();
    if (id !== null) openDetail(id);
    else if (state.detailId !== null) closeDetail(false);
  }

  // ---------------------------------------------------------------- workers

  function renderWorkers(workers) {
    $('workers-empty').hidden = workers.length > 0;
    fillBody('workers', $('workers').tBodies[0], workers, () => workers.map(workerRow));
  }

  function workerRow(w) {
    // Past its own lease (the server compares with the lease the worker registered).
    const stale = w.live === false;
    const queues = (w.queues || []).map((q) => el('span', { class: 'tag' }, q));
    return el('tr', { 'data-worker-id': w.id, class: stale ? 'stale' : null },
      el('td', { class: 'num' }, w.id),
      el('td', { class: 'clip', title: w.hostname }, w.hostname),
      el('td', { class: 'num' }, w.pid),
      el('td', { class: 'tags' }, ...(queues.length ? queues : [el('span', { class: 'faint' }, '—')])),
      el('td', { class: 'num' }, w.pool_size),
      el('td', { class: 'num' }, `${w.running}/${w.pool_size}`),
      el('td', null, relTime(w.started_at)),
      el('td', { class: 'heartbeat' }, `${fmtDuration(w.heartbeat_age_secs)} ago`,
        stale ? el('span', { class: 'stale-tag', title: `no heartbeat within its ${w.lease_secs} s lease: its jobs go back to the queue` }, 'lost') : null));
  }

  // ---------------------------------------------------------------- periodic

  function renderPeriodic(schedules) {
    $('periodic-empty').hidden = schedules.length > 0;
    fillBody('periodic', $('periodic').tBodies[0], schedules, () => schedules.map(periodicRow));
  }

  function periodicRow(p) {
    const last = p.last_slot
      ? [relTime(p.last_slot), p.last_job_id != null
        ? el('a', { href: `#job/${p.last_job_id}`, class: 'job-link' }, ` job ${p.last_job_id}`) : null]
      : [el('span', { class: 'faint' }, '—')];
    return el('tr', { 'data-periodic': p.name },
      el('td', { class: 'clip', title: `job ${p.job}` }, p.name),
      el('td', null, el('code', null, p.schedule)),
      el('td', null, p.time_zone),
      el('td', null, el('span', { class: 'tag' }, p.queue)),
      el('td', null, ...last),
      el('td', null, p.next_slot ? relTime(p.next_slot) : el('span', { class: 'faint' }, '—')));
  }

  // --------------------------------------------------- search, selection, bulk

  /** The list's criteria as the API's parameters (no paging): also the filter of a bulk action. */
  function criteria() {
    const c = {};
    if (state.queue) c.queue = state.queue;
    if (state.states.length) c.state = state.states.join(',');
    if (state.search.text) c[state.search.kind] = state.search.text;
    const t = state.time;
    if (t.range === 'custom') {
      if (t.from) c[`${t.field}_after`] = utcInput(t.from);
      if (t.to) c[`${t.field}_before`] = utcInput(t.to);
    } else if (t.range) {
      c[`${t.field}_after`] = t.range; // "24h": that long ago, by the database's clock
    }
    return c;
  }

  /** A datetime-local value, read as UTC: "2026-12-05T10:00" → "2026-12-05T10:00:00Z". */
  function utcInput(v) {
    return v.length === 16 ? `${v}:00Z` : `${v}Z`;
  }

  /** The criteria in words, for the confirmation of a bulk action on "all matching". */
  function describeCriteria() {
    const c = criteria(), parts = [];
    if (c.queue) parts.push(`queue ${c.queue}`);
    if (c.state) parts.push(`state ${c.state.replaceAll(',', ' or ')}`);
    if (c.id) parts.push(`id ${c.id}`);
    if (c.job) parts.push(`job ${c.job}`);
    if (c.error) parts.push(`error containing "${c.error}"`);
    for (const f of ['created', 'finished']) {
      if (c[`${f}_after`]) parts.push(`${f} ${/^\d+[smhd]$/.test(c[`${f}_after`]) ? `in the last ${c[`${f}_after`]}` : `from ${c[`${f}_after`]}`}`);
      if (c[`${f}_before`]) parts.push(`${f} before ${c[`${f}_before`]}`);
    }
    return parts.join(', ');
  }

  function readSearchAndTime() {
    state.search = { kind: $('search-kind').value, text: $('search').value.trim() };
    state.time = { field: $('time-field').value, range: $('time-range').value, from: $('time-from').value, to: $('time-to').value };
    $('time-custom').hidden = state.time.range !== 'custom';
    $('search').placeholder = { job: 'a name, or its start and *', error: 'text in the last error', id: 'a job id' }[state.search.kind];
  }

  /** "Clear filters": queue, states, search and time. */
  function clearFilters() {
    $('search').value = '';
    $('time-range').value = '';
    $('time-from').value = '';
    $('time-to').value = '';
    setFilters('', []);
  }

  function clearSelection() {
    state.selected.clear();
    state.selectAll = false;
    state.matchCount = null;
    syncChecks();
  }

  /** The ticks of the rows on screen follow the selection (rows are not redrawn for it). */
  function syncChecks() {
    for (const box of document.querySelectorAll('#jobs input[data-select]')) {
      box.checked = state.selectAll || state.selected.has(Number(box.getAttribute('data-select')));
      box.disabled = state.selectAll;
    }
    const boxes = [...document.querySelectorAll('#jobs input[data-select]')];
    $('select-page').checked = boxes.length > 0 && boxes.every((b) => b.checked);
    $('select-page').disabled = state.selectAll;
    renderBulkBar();
  }

  /** A click on a row's checkbox; true when it was one (the row's detail then stays closed). */
  function onSelectClick(ev) {
    const box = ev.target.closest('input[data-select]');
    if (!box) return ev.target.closest('td.col-check') !== null;
    const id = Number(box.getAttribute('data-select'));
    if (box.checked) state.selected.add(id);
    else state.selected.delete(id);
    syncChecks();
    return true;
  }

  function onSelectPage() {
    const on = $('select-page').checked;
    for (const box of document.querySelectorAll('#jobs input[data-select]')) {
      const id = Number(box.getAttribute('data-select'));
      if (on) state.selected.add(id);
      else state.selected.delete(id);
    }
    syncChecks();
  }

  /** "Select all matching": counts the filter's jobs first, so the confirmation can say how many. */
  async function selectAllMatching() {
    const c = criteria();
    if (!Object.keys(c).length) return;
    try {
      const body = await api(`jobs/count?${new URLSearchParams(c)}`);
      state.selected.clear();
      state.selectAll = true;
      state.matchCount = body.count;
      syncChecks();
    } catch (e) {
      showMessage(`cannot count the matching jobs: ${e.message}`, true);
    }
  }

  function selectionSize() {
    return state.selectAll ? state.matchCount : state.selected.size;
  }

  function renderBulkBar() {
    const n = selectionSize();
    const running = state.bulkOp !== null && state.bulkOp.state === 'running';
    $('bulk-count').textContent = state.selectAll
      ? `all ${n} ${n === 1 ? 'job' : 'jobs'} matching the filter selected`
      : (n ? `${n} selected` : 'none selected');
    $('bulk-all').hidden = state.selectAll || !Object.keys(criteria()).length;
    $('bulk-clear').hidden = !n && !state.selectAll;
    for (const kind of ['retry', 'cancel', 'delete']) {
      const b = $(`bulk-${kind}`);
      b.hidden = cfg.readOnly;
      b.disabled = !n || running || state.busy;
    }
  }

  const BULK_WORDS = {
    retry: ['Retry', 'retried'],
    cancel: ['Cancel', 'cancelled'],
    delete: ['Delete', 'deleted'],
  };

  /** Starts a bulk action on the selection (after the operator confirms), then follows its progress. */
  async function runBulk(kind) {
    const n = selectionSize();
    if (!n || state.busy || (state.bulkOp && state.bulkOp.state === 'running')) return;
    const [Verb] = BULK_WORDS[kind];
    const what = state.selectAll
      ? `all ${n} ${n === 1 ? 'job' : 'jobs'} matching ${describeCriteria()}`
      : `${n} selected ${n === 1 ? 'job' : 'jobs'}`;
    const warn = kind === 'delete' ? ' This cannot be undone.' : '';
    if (!window.confirm(`${Verb} ${what}? Each job follows the rules of a single ${kind}: a job whose state does not allow it is left as it is.${warn}`)) return;
    const request = state.selectAll ? { action: kind, filter: criteria() } : { action: kind, ids: [...state.selected] };
    state.busy = true;
    renderBulkBar();
    try {
      const op = await api('bulk', 'POST', request);
      clearSelection();
      followBulk(op);
    } catch (e) {
      showMessage(`${kind} of ${what} failed: ${e.message}`, true);
    } finally {
      state.busy = false;
      renderBulkBar();
    }
  }

  /** Shows a bulk operation's progress, and polls it until it is no longer running. */
  function followBulk(op) {
    state.bulkOp = op;
    renderBulkProgress(op);
    renderBulkBar();
    if (op.state !== 'running') {
      const [, done] = BULK_WORDS[op.action];
      showMessage(op.state === 'failed'
        ? `bulk ${op.action} stopped after ${op.examined} of ${op.total}: ${op.error}`
        : `${op.applied} ${op.applied === 1 ? 'job' : 'jobs'} ${done}${op.refused ? `, ${op.refused} refused by their state` : ''}`,
      op.state === 'failed');
      refreshNow();
      return;
    }
    setTimeout(async () => {
      try {
        followBulk(await api(`bulk/${op.id}`));
      } catch (e) {
        showMessage(`cannot follow bulk ${op.action}: ${e.message}`, true);
        state.bulkOp = null;
        renderBulkBar();
      }
    }, 400);
  }

  function renderBulkProgress(op) {
    const [, done] = BULK_WORDS[op.action];
    const box = $('bulk-progress-box');
    box.hidden = false;
    box.setAttribute('data-state', op.state);
    const bar = $('bulk-progress');
    bar.max = Math.max(1, op.total);
    bar.value = op.total ? op.examined : 1;
    const end = op.state === 'running' ? '…' : (op.state === 'failed' ? ` — stopped: ${op.error}` : ' — done');
    const refusedNote = op.refused
      ? `, ${op.refused} refused (${op.refusals.slice(0, 3).map((r) => `job ${r.id}: ${r.why}`).join('; ')}${op.refused > 3 ? '; …' : ''})`
      : '';
    $('bulk-progress-text').textContent =
      `${op.action}: ${op.examined} of ${op.total} looked at, ${op.applied} ${done}${refusedNote}${end}`;
  }

  // ------------------------------------------------------------ chart range

  /** Words for the charts' range, from the data's own bucket width. */
  function rangeText(activity) {
    const step = activity.step_secs || 60;
    if (step >= 3600) return { span: '−7 d', per: `/ ${step / 3600} h`, last: 'in the last 7 days', hint: `last 7 days, per ${step / 3600} hours` };
    if (step > 60) return { span: '−24 h', per: `/ ${step / 60} min`, last: 'in the last 24 hours', hint: `last 24 hours, per ${step / 60} minutes` };
    return { span: '−60 m', per: '/ min', last: 'in the last hour', hint: 'last 60 minutes, per minute' };
  }

  function onChartRange() {
    state.chartRange = $('chart-range').value;
    state.lastActivity = 0;
    $('charts').classList.add('loading');
    refreshNow();
  }

  function bindSearchAndBulk() {
    $('filters').addEventListener('submit', () => readFilters());
    $('search').addEventListener('search', () => readFilters()); // the field's clear button
    $('search-kind').addEventListener('change', () => { readSearchAndTime(); if (state.search.text) readFilters(); });
    for (const id of ['time-field', 'time-range', 'time-from', 'time-to']) $(id).addEventListener('change', readFilters);
    $('select-page').addEventListener('change', onSelectPage);
    $('bulk-all').addEventListener('click', selectAllMatching);
    $('bulk-clear').addEventListener('click', clearSelection);
    for (const kind of ['retry', 'cancel', 'delete']) $(`bulk-${kind}`).addEventListener('click', () => runBulk(kind));
    $('chart-range').addEventListener('change', onChartRange);
    state.chartRange = $('chart-range').value;
    readSearchAndTime();
    $('filter-reset').hidden = !Object.keys(criteria()).length;
    renderBulkBar();
  }

  // ---------------------------------------------------------- refresh loop

  let timer = null, inFlight = false, again = false;

  /** Fetches every section at once; each renders as soon as its answer arrives. */
  async function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    clearTimeout(timer);
    const tasks = [
      api('queues').then((b) => renderQueues(b.queues || [])),
      loadJobs(),
      api('workers').then((b) => renderWorkers(b.workers || [])),
      api('periodic').then((b) => renderPeriodic(b.periodic || [])),
    ];
    if (state.detailId !== null) {
      const id = state.detailId;
      tasks.push(loadDetail().catch((e) => detailFailed(id, e)));
    }
    if (Date.now() - state.lastActivity >= ACTIVITY_MS - 100) {
      const range = state.chartRange;
      tasks.push(api(`activity?range=${range}`).then((b) => {
        if (range !== state.chartRange) return; // the range changed meanwhile; a newer request follows
        state.lastActivity = Date.now();
        renderCharts({ ...b, range });
      }));
    }
    const results = await Promise.allSettled(tasks);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      state.refreshError = failed.reason instanceof Error ? failed.reason.message : String(failed.reason);
    } else {
      state.refreshError = null;
      state.lastOk = Date.now();
    }
    renderStatus();
    inFlight = false;
    if (again) { again = false; refresh(); } else if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
  }

  // A page left open in a background tab costs the database nothing: refreshing stops while the
  // tab is hidden and resumes, at once, when it is shown again.
  function onVisibilityChange() {
    if (document.hidden) clearTimeout(timer);
    else refresh();
  }

  function refreshNow() {
    refresh();
  }

  // ------------------------------------------------------------------- init

  function bind() {
    $('filters').addEventListener('submit', (e) => e.preventDefault());
    $('filter-queue').addEventListener('change', readFilters);
    for (const box of document.querySelectorAll('input[name="state"]')) box.addEventListener('change', readFilters);
    $('filter-reset').addEventListener('click', () => clearFilters());
    bindSearchAndBulk();
    $('queues').tBodies[0].addEventListener('click', onQueuesClick);
    $('jobs').tBodies[0].addEventListener('click', onJobsClick);
    $('jobs').tBodies[0].addEventListener('keydown', onJobsKey);
    $('newer').addEventListener('click', () => goPage(false));
    $('older').addEventListener('click', () => goPage(true));
    $('close-detail').addEventListener('click', () => closeDetail());
    for (const kind of ['retry', 'cancel', 'delete']) $(kind).addEventListener('click', () => runAction(kind));
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && state.detailId !== null && !e.defaultPrevented) closeDetail();
    });
    window.addEventListener('hashchange', onHashChange);
    document.addEventListener('visibilitychange', onVisibilityChange);
  }

  function init() {
    document.body.classList.toggle('read-only', cfg.readOnly);
    $('read-only-badge').hidden = !cfg.readOnly;
    // Filters the browser restored from its form cache count from the start.
    state.queue = $('filter-queue').value;
    state.states = [...document.querySelectorAll('input[name="state"]:checked')].map((i) => i.value);
    $('filter-reset').hidden = !Object.keys(criteria()).length;
    bind();
    watchChartWidth();
    renderPager();
    state.detailId = parseHash(); // a #job/N link: the first refresh opens it
    refresh();
    setInterval(tick, 1000);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
