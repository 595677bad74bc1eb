// Ferrite's dashboard: plain JavaScript on the gateway's own REST API.
// Live values come from /api/v1/stream (server-sent events, read with fetch
// so that the bearer token travels in a header, never in a URL). Everything
// from the gateway is put in the page as text, never as HTML.
'use strict';

const SPARK_POINTS = 120;
const HISTORY_WINDOW_MS = 10 * 60 * 1000;
const SLOW_REFRESH_MS = 5000;

const state = {
  token: sessionStorage.getItem('ferrite-token') || '',
  models: new Map(), // model name -> model
  devices: new Map(), // device id -> {view, rows: Map(property -> row)}
  series: new Map(), // "device/property" -> [[t, v], ...]
  config: null, // the configuration version the cards were built for
  streamAbort: null, // ends the current stream (to rebuild after a change)
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function headers(extra = {}) {
  const h = Object.assign({ accept: 'application/json' }, extra);
  if (state.token) h.authorization = 'Bearer ' + state.token;
  return h;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error.message : 'HTTP ' + status);
    this.status = status;
    this.code = body && body.error ? body.error.code : '';
  }
}

async function api(path, options = {}) {
  const res = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
  if (res.status === 401) askToken();
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

function askToken() {
  const form = document.getElementById('token-form');
  form.hidden = false;
}

function setupToken() {
  const form = document.getElementById('token-form');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = document.getElementById('token').value.trim();
    sessionStorage.setItem('ferrite-token', state.token);
    form.hidden = true;
    refreshSlow();
  });
}

// ---- values -------------------------------------------------------------

function formatValue(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'number' && !Number.isInteger(v)) return String(Math.round(v * 1000) / 1000);
  return String(v);
}

function formatTime(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleTimeString();
}

function numeric(v) {
  if (typeof v === 'number') return v;
  if (typeof v === 'boolean') return v ? 1 : 0;
  return null;
}

function pushPoint(key, ts, value) {
  const n = numeric(value);
  if (n === null || !ts) return;
  const t = Date.parse(ts);
  const points = state.series.get(key) || [];
  if (points.length && points[points.length - 1][0] >= t) return;
  points.push([t, n]);
  while (points.length > SPARK_POINTS) points.shift();
  state.series.set(key, points);
}

function drawSpark(svg, points) {
  svg.replaceChildren();
  if (points.length < 2) return;
  const w = 120, h = 24;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of points) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi - lo || 1;
  const xy = points.map(([t, v]) => {
    const x = t1 === t0 ? w : ((t - t0) / (t1 - t0)) * w;
    const y = h - 2 - ((v - lo) / span) * (h - 4);
    return x.toFixed(1) + ',' + y.toFixed(1);
  });
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', xy.join(' '));
  svg.append(line);
}

// ---- devices ------------------------------------------------------------

// A field for one value of `typed` (a property or a method input): a
// select for bool, a number field carrying the model's limits, else text.
function typedInput(name, typed) {
  if (typed.type === 'bool') {
    return el('select', { name }, el('option', { value: 'true', text: 'true' }), el('option', { value: 'false', text: 'false' }));
  }
  if (typed.type === 'int' || typed.type === 'float') {
    return el('input', {
      type: 'number', name, required: '',
      step: typed.type === 'int' ? '1' : 'any',
      min: typed.min, max: typed.max,
      title: limitsText(typed),
      placeholder: name,
    });
  }
  return el('input', { type: 'text', name, required: '', placeholder: name });
}

// The field's value as the model types it.
function typedValue(input, type) {
  if (type === 'bool') return input.value === 'true';
  if (type === 'int') return parseInt(input.value, 10);
  if (type === 'float') return parseFloat(input.value);
  return input.value;
}

// Sends what `send` makes on submit, showing `done(answer)` or the error.
function submitting(form, output, send, done) {
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    output.className = '';
    output.textContent = '…';
    try {
      const answer = await send();
      output.className = 'ok';
      output.textContent = done(answer);
    } catch (err) {
      output.className = 'fail';
      output.textContent = err.message;
    }
  });
}

function writeForm(deviceId, name, property) {
  const form = el('form', { class: 'write', 'data-property': name });
  const input = typedInput('value', property);
  const output = el('output');
  form.append(input, el('button', { text: 'write' }), output);
  submitting(form, output,
    () => api(`/api/v1/devices/${encodeURIComponent(deviceId)}/properties/${encodeURIComponent(name)}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ value: typedValue(input, property.type) }),
    }),
    (answer) => (answer && answer.confirmed === false ? 'sent' : 'written'));
  return form;
}

// A method of the model: a field per input, and the outputs once called.
function callForm(deviceId, name, method) {
  const form = el('form', { class: 'call', 'data-method': name });
  const inputs = (method.inputs || []).map((arg) => [arg, typedInput(arg.name, arg)]);
  const output = el('output');
  form.append(el('span', { class: 'method', text: name, title: method.description || '' }),
    ...inputs.map(([, input]) => input), el('button', { text: 'call' }), output);
  submitting(form, output,
    () => api(`/api/v1/devices/${encodeURIComponent(deviceId)}/methods/${encodeURIComponent(name)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ inputs: Object.fromEntries(inputs.map(([arg, input]) => [arg.name, typedValue(input, arg.type)])) }),
    }),
    (answer) => Object.entries(answer.outputs || {}).map(([k, v]) => `${k}: ${v}`).join(', ') || 'done');
  return form;
}

function limitsText(p) {
  const parts = [];
  if (p.min !== undefined && p.min !== null) parts.push('min ' + p.min);
  if (p.max !== undefined && p.max !== null) parts.push('max ' + p.max);
  return parts.join(', ');
}

function deviceCard(view) {
  const model = state.models.get(view.model) || { properties: {} };
  const badge = el('span', { class: 'badge status' });
  const card = el('article', { class: 'device', 'data-device': view.id },
    el('header', {}, el('h3', { text: view.id }), badge, el('span', { class: 'proto', text: `${view.model} · ${view.protocol}` })),
    el('p', { class: 'error' }));
  const table = el('table');
  const rows = new Map();
  for (const [name, property] of Object.entries(model.properties || {})) {
    const spark = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    spark.setAttribute('class', 'spark');
    spark.setAttribute('viewBox', '0 0 120 24');
    const writable = property.access === 'write' || property.access === 'readwrite';
    const row = el('tr', { 'data-property': name },
      el('th', { text: name, title: property.description }),
      el('td', { class: 'value', text: '—' }),
      el('td', { class: 'unit', text: property.unit || '' }),
      el('td', { class: 'spark-cell' }, spark),
      el('td', { class: 'form-cell' }, writable ? writeForm(view.id, name, property) : ''));
    table.append(row);
    rows.set(name, { row, value: row.querySelector('td.value'), spark, type: property.type });
  }
  card.append(table);
  for (const [name, method] of Object.entries(model.methods || {})) {
    card.append(callForm(view.id, name, method));
  }
  const entry = { card, badge, error: card.querySelector('.error'), rows };
  historyWhenSeen.observe(card);
  card.ferrite = entry;
  return entry;
}

// History for sparklines is fetched once per card, when the card first
// scrolls into view: a gateway with a thousand devices is not asked for a
// hundred thousand histories at page load.
const historyWhenSeen = new IntersectionObserver((seen, observer) => {
  for (const s of seen) {
    if (!s.isIntersecting) continue;
    observer.unobserve(s.target);
    const entry = s.target.ferrite;
    for (const [name, cell] of entry.rows) {
      if (cell.type === 'int' || cell.type === 'float' || cell.type === 'bool') {
        loadHistory(s.target.dataset.device, name, cell.spark);
      }
    }
  }
});

async function loadHistory(device, property, spark) {
  const since = new Date(Date.now() - HISTORY_WINDOW_MS).toISOString();
  try {
    const entries = await api(`/api/v1/devices/${encodeURIComponent(device)}/properties/${encodeURIComponent(property)}/history?since=${since}&limit=1000`);
    const key = device + '/' + property;
    const live = state.series.get(key) || [];
    state.series.set(key, []);
    for (const e of entries.slice(-SPARK_POINTS)) pushPoint(key, e.ts, e.value);
    for (const [t, v] of live) pushPoint(key, new Date(t).toISOString(), v);
    drawSpark(spark, state.series.get(key));
  } catch (_) { /* the sparkline fills from live values */ }
}

function showDevice(view) {
  let entry = state.devices.get(view.id);
  const container = document.getElementById('devices');
  if (!entry) {
    container.querySelector('.empty')?.remove();
    entry = deviceCard(view);
    state.devices.set(view.id, entry);
    container.append(entry.card);
  }
  entry.badge.textContent = view.status;
  entry.badge.className = 'badge status ' + (view.status === 'error' ? 'error-status' : view.status);
  entry.card.dataset.status = view.status;
  entry.error.textContent = view.error || '';
}

function showReading(r) {
  const entry = state.devices.get(r.device);
  const cell = entry && entry.rows.get(r.property);
  if (!cell) return;
  cell.value.textContent = formatValue(r.value);
  cell.value.title = (r.quality || '') + ' ' + formatTime(r.ts);
  cell.row.className = 'q-' + r.quality;
  if (r.quality === 'good') {
    const key = r.device + '/' + r.property;
    pushPoint(key, r.ts, r.value);
    drawSpark(cell.spark, state.series.get(key) || []);
  }
}

function onUpdate(update) {
  for (const view of update.devices) showDevice(view);
  for (const r of update.readings) showReading(r);
}

// Server-sent events over fetch, so the token goes in a header.
async function stream() {
  const live = document.getElementById('live');
  for (;;) {
    const abort = new AbortController();
    state.streamAbort = abort;
    try {
      const res = await fetch('/api/v1/stream', { headers: headers({ accept: 'text/event-stream' }), signal: abort.signal });
      if (res.status === 401) askToken();
      if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
      live.textContent = 'live';
      live.className = 'badge online';
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = 'message', data = '';
          for (const line of chunk.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trimStart();
          }
          if (event === 'update' && data) onUpdate(JSON.parse(data));
        }
      }
    } catch (_) { /* retried below */ }
    // Ended on purpose (the configuration changed): again at once.
    if (abort.signal.aborted) continue;
    live.textContent = 'reconnecting';
    live.className = 'badge offline';
    await sleep(2000);
  }
}

// When models, devices or rules change (a new configuration version), the
// cards are built again from the new models, and the stream starts afresh:
// its first event carries every device and reading.
async function watchConfig() {
  const c = await api('/api/v1/config');
  document.getElementById('config-line').textContent =
    `configuration v${c.version} (${c.origin.kind}) · ${c.hash.slice(0, 19)}`;
  if (state.config !== null && c.version !== state.config) {
    await loadModels();
    fillModels(document.querySelector('#add-device select[name=model]'));
    state.devices.clear();
    const container = document.getElementById('devices');
    container.replaceChildren(el('p', { class: 'empty', text: 'configuration changed; reloading…' }));
    if (state.streamAbort) state.streamAbort.abort();
  }
  state.config = c.version;
}

// ---- rules, events, sync, status ----------------------------------------

async function showRules() {
  const body = document.querySelector('#rules tbody');
  const rules = await api('/api/v1/rules');
  body.replaceChildren(...rules.map((r) => {
    const toggle = el('button', { text: r.enabled ? 'disable' : 'enable' });
    toggle.addEventListener('click', async () => {
      try {
        await api(`/api/v1/rules/${encodeURIComponent(r.name)}/${r.enabled ? 'disable' : 'enable'}`, { method: 'POST' });
      } catch (err) { toggle.title = err.message; }
      showRules().catch(() => {});
    });
    return el('tr', { 'data-rule': r.name },
      el('td', { text: r.name, title: r.when }),
      el('td', {}, el('span', { class: 'badge ' + r.state, text: r.state })),
      el('td', { text: r.firings + (r.last_fired ? ' · ' + formatTime(r.last_fired) : '') }),
      el('td', {}, toggle));
  }));
}

async function showEvents() {
  const list = document.getElementById('events');
  const events = await api('/api/v1/events?limit=20');
  list.replaceChildren(...events.map((e) => el('li', { class: e.severity || '' },
    el('time', { text: formatTime(e.ts) + ' ' }),
    el('span', { text: e.message || e.kind || '' }))));
  if (!events.length) list.replaceChildren(el('li', { class: 'empty', text: 'none yet' }));
}

function defs(target, pairs) {
  target.replaceChildren();
  for (const [k, v] of pairs) target.append(el('dt', { text: k }), el('dd', { text: v }));
}

async function showSync() {
  const s = await api('/api/v1/sync');
  const target = document.getElementById('sync');
  if (!s.configured) return defs(target, [['cloud', 'not configured']]);
  defs(target, [
    ['broker', s.broker],
    ['connected', s.connected ? 'yes' : 'no'],
    ['acknowledged', String(s.last_acked ?? '—')],
    ['backlog', `${s.backlog ?? 0} changes (${s.backlog_bytes ?? 0} B)`],
    ['sent', `${s.points_sent ?? 0} changes, ${s.bytes_sent ?? 0} B`],
    ['error', s.last_error || '—'],
  ]);
}

async function showStatus() {
  const s = await api('/api/v1/status');
  document.getElementById('gateway-id').textContent = s.gateway || '';
  const store = s.store.failing ? 'store FAILING: ' + (s.store.last_error || '') : 'store ok';
  document.getElementById('status-line').textContent =
    `v${s.version} · up ${s.uptime_s}s · ${s.devices.online}/${s.devices.total} devices online · ${store}`;
}

async function loadModels() {
  const models = await api('/api/v1/models');
  state.models.clear();
  for (const m of models) state.models.set(m.name, m);
}

// "Add a device": the device's file made from the form, tried through its
// driver (POST .../probe: checked, polled once, nothing saved), then saved
// (PUT /api/v1/devices/{id}) once the values look right.
function deviceFile(form) {
  const f = form.elements;
  const doc = { kind: 'Device', name: f.name.value, model: f.model.value, poll: f.poll.value };
  if (f.protocol.value === 'opcua') {
    doc.opcua = { endpoint: f.endpoint.value };
  } else {
    doc[f.protocol.value] = { host: f.host.value, port: parseInt(f.port.value, 10), unit: parseInt(f.unit.value, 10) };
  }
  return JSON.stringify(doc);
}

function fillModels(select) {
  const chosen = select.value;
  select.replaceChildren(...[...state.models.keys()].sort().map((name) => el('option', { value: name, text: name })));
  if (state.models.has(chosen)) select.value = chosen;
}

function setupAddDevice() {
  const form = document.getElementById('add-device');
  const output = form.querySelector('output');
  const rows = form.querySelector('table.probe tbody');
  const save = form.elements.save;
  const protocolFields = () => {
    const opcua = form.elements.protocol.value === 'opcua';
    for (const label of form.querySelectorAll('label[data-for]')) {
      label.hidden = (label.dataset.for === 'opcua') !== opcua;
    }
  };
  form.elements.protocol.addEventListener('change', protocolFields);
  // Any change means trying again before saving.
  form.addEventListener('input', () => { save.disabled = true; });
  fillModels(form.elements.model);
  const path = () => `/api/v1/devices/${encodeURIComponent(form.elements.name.value)}`;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    save.disabled = true;
    rows.replaceChildren();
    output.className = '';
    output.textContent = 'trying…';
    try {
      const probe = await api(path() + '/probe', { method: 'POST', headers: { 'content-type': 'application/json' }, body: deviceFile(form) });
      for (const [name, v] of Object.entries(probe.values)) {
        rows.append(el('tr', { 'data-property': name, class: 'q-' + v.quality },
          el('th', { text: name }), el('td', { class: 'value', text: v.quality === 'good' ? formatValue(v.value) : v.quality })));
      }
      output.className = probe.status === 'online' ? 'ok' : 'fail';
      output.textContent = probe.status + (probe.error ? ': ' + probe.error : '') + ` (${probe.took_ms} ms)`;
      save.disabled = probe.status !== 'online';
    } catch (err) {
      output.className = 'fail';
      output.textContent = err.message;
    }
  });
  save.addEventListener('click', async () => {
    save.disabled = true;
    try {
      const applied = await api(path(), { method: 'PUT', headers: { 'content-type': 'application/json' }, body: deviceFile(form) });
      output.className = 'ok';
      output.textContent = `saved: configuration v${applied.version}`;
      watchConfig().catch(() => {});
    } catch (err) {
      output.className = 'fail';
      output.textContent = err.message;
    }
  });
}

function refreshSlow() {
  for (const show of [showStatus, showSync, showRules, showEvents, watchConfig]) show().catch(() => {});
}

async function main() {
  setupToken();
  for (;;) {
    try { await loadModels(); break; } catch (_) { await sleep(2000); }
  }
  setupAddDevice();
  refreshSlow();
  setInterval(refreshSlow, SLOW_REFRESH_MS);
  stream();
}

main();
