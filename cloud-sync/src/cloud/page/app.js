// The fleet page: the control plane's own REST API, called with fetch
// (the token, if the API has tokens, in a header, kept for this tab only).
'use strict';

const state = {
  token: sessionStorage.getItem('ferrite-cloud-token') || '',
  gateway: null,
  rollout: null,
};

async function api(path) {
  const headers = {};
  if (state.token) headers.authorization = 'Bearer ' + state.token;
  const res = await fetch(path, { headers });
  if (res.status === 401) {
    document.getElementById('token-form').hidden = false;
    throw new Error('a token is needed');
  }
  if (!res.ok) throw new Error(path + ': ' + res.status);
  return res.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? '—'));
  return node;
}

function ago(ts) {
  if (!ts) return '—';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  return s < 60 ? s + ' s ago' : Math.round(s / 60) + ' min ago';
}

async function refreshFleet() {
  const filter = document.getElementById('filter').value.trim();
  const query = filter ? '?limit=1000&label=' + encodeURIComponent(filter) : '?limit=1000';
  const fleet = await api('/api/v1/fleet' + query);
  const s = fleet.summary;
  document.getElementById('summary').textContent =
    `${s.gateways} gateways, ${s.connected} connected, backlog ${s.backlog}, ` +
    `lost at edge ${s.lost_at_edge}, replicas ${s.replicas.length}`;
  const body = document.querySelector('#gateways tbody');
  body.replaceChildren(...fleet.gateways.map((g) => {
    const labels = el('td', { class: 'labels' },
      ...Object.entries(g.labels).map(([k, v]) => el('span', {}, `${k}=${v}`)));
    const row = el('tr', { 'data-gateway': g.id },
      el('td', {}, g.id),
      el('td', { class: g.connected ? 'online' : 'offline' }, g.connected ? 'online' : 'offline'),
      el('td', {}, ago(g.last_seen)),
      el('td', { class: 'backlog' }, g.backlog),
      el('td', {}, g.lost_at_edge),
      el('td', {}, `v${g.applied_version} of v${g.desired_version}`),
      el('td', { class: 'config' }, g.config_version ? `v${g.config_version} ${g.config_state}` : '—'),
      labels,
      el('td', {}, g.replica));
    row.addEventListener('click', () => { state.gateway = g.id; refreshTwin(); });
    return row;
  }));
}

async function refreshTwin() {
  if (!state.gateway) return;
  const gw = encodeURIComponent(state.gateway);
  const devices = await api(`/api/v1/gateways/${gw}/devices`);
  const twins = await Promise.all(devices.map((d) =>
    api(`/api/v1/gateways/${gw}/devices/${encodeURIComponent(d)}`)));
  document.getElementById('twin').hidden = false;
  document.getElementById('twin-gateway').textContent = state.gateway;
  document.getElementById('twin-devices').replaceChildren(...twins.map((t) => {
    const names = [...new Set([...Object.keys(t.reported), ...Object.keys(t.desired)])].sort();
    return el('table', { class: 'twin', 'data-device': t.device },
      el('caption', {}, t.device),
      el('tr', {}, el('th', {}, 'property'), el('th', {}, 'reported'), el('th', {}, 'desired')),
      ...names.map((n) => el('tr', { 'data-property': n },
        el('td', {}, n),
        el('td', { class: 'reported' }, t.reported[n]),
        el('td', { class: 'desired' }, t.desired[n]))));
  }));
}

async function refreshRollouts() {
  const list = await api('/api/v1/rollouts?limit=20');
  document.getElementById('rollouts').replaceChildren(...list.rollouts.map((r) => {
    const s = r.summary;
    const item = el('li', { 'data-rollout': r.id },
      `#${r.id} ${r.kind} to ${JSON.stringify(r.selector)} by ${r.actor}: ` +
      `${s.applied} applied, ${s.pending} pending, ${s.rejected} rejected, ${s.superseded} superseded`);
    item.addEventListener('click', () => { state.rollout = r.id; refreshRollout(); });
    return item;
  }));
  await refreshRollout();
}

async function refreshRollout() {
  if (state.rollout === null) return;
  const r = await api(`/api/v1/rollouts/${state.rollout}`);
  document.getElementById('rollout').replaceChildren(el('table', { id: 'rollout-gateways' },
    el('tr', {}, el('th', {}, 'gateway'), el('th', {}, 'version'), el('th', {}, 'state'), el('th', {}, 'errors')),
    ...r.gateways.map((g) => el('tr', { 'data-gateway': g.gateway },
      el('td', {}, g.gateway), el('td', {}, g.version),
      el('td', { class: 'state state-' + g.state }, g.state),
      el('td', {}, g.errors.join('; ') || '')))));
}

async function refresh() {
  try {
    await refreshFleet();
    await refreshTwin();
    await refreshRollouts();
  } catch (e) {
    document.getElementById('summary').textContent = e.message;
  }
}

document.getElementById('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  state.token = document.getElementById('token').value.trim();
  sessionStorage.setItem('ferrite-cloud-token', state.token);
  document.getElementById('token-form').hidden = true;
  refresh();
});
document.getElementById('filter').addEventListener('change', refresh);
refresh();
setInterval(refresh, 2000);
