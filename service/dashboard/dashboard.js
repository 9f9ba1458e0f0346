// Ferry dashboard: reads ferryd's admin API (GET only) with the token the
// person enters, redraws every few seconds. Everything from the API is put
// in the page as text (textContent), never as markup.
'use strict';

const STATES = ['pending', 'presync', 'cutover', 'verified', 'done', 'failed'];
const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(250, parseInt(params.get('refresh') || '2000', 10) || 2000);
let token = null;
let timer = null;
let lastStatus = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else if (k === 'title') e.title = v;
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function fmtTime(t) {
  if (!t) return '';
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function fmtDuration(s) {
  if (!isFinite(s) || s < 0) return '—';
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function bar(done, failed, total, attrs) {
  const pct = total > 0 ? Math.round(100 * done / total) : 0;
  const fpct = total > 0 ? Math.round(100 * failed / total) : 0;
  const b = el('div', Object.assign({ class: 'bar', 'data-pct': String(pct) }, attrs || {}));
  const fillEl = el('div', { class: 'fill' });
  fillEl.style.width = pct + '%';  // CSSOM: allowed by the page's CSP, unlike style=""
  b.append(fillEl);
  if (fpct > 0) {
    const f = el('div', { class: 'fail' });
    f.style.left = pct + '%';
    f.style.width = fpct + '%';
    b.append(f);
  }
  b.append(el('div', { class: 'txt' }, `${pct}%` + (total > 0 ? ` (${done}/${total})` : '')));
  return b;
}

function stateBadge(s) {
  return el('span', { class: 'state ' + s.split(',')[0] }, s);
}

// ---- API -------------------------------------------------------------------

class AuthError extends Error {}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
  if (r.status === 401) throw new AuthError('the token was refused');
  const ct = r.headers.get('Content-Type') || '';
  const body = ct.startsWith('application/json') ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || `HTTP ${r.status}`);
  return body;
}

async function download(wave, format) {
  const r = await fetch(`/v1/report?wave=${encodeURIComponent(wave)}&format=${format}`,
    { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
  if (!r.ok) throw new Error(`report: HTTP ${r.status}`);
  const url = URL.createObjectURL(await r.blob());
  const a = el('a', { href: url, download: `ferry-report-${wave}.${format}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---- overview --------------------------------------------------------------

function finishedUsers(users) {
  return users.filter((u) => ['done', 'verified', 'failed'].includes(u.state) && !u.running);
}

// ETA from the rate at which the wave's users finished so far
function eta(users) {
  const fin = finishedUsers(users);
  const remaining = users.length - fin.length;
  if (users.length === 0) return '—';
  if (remaining === 0) return 'finished';
  const starts = users.map((u) => u.started_at).filter((t) => t > 0);
  if (fin.length === 0 || starts.length === 0) return '—';
  const first = Math.min(...starts);
  const last = Math.max(...fin.map((u) => u.finished_at || 0));
  const rate = fin.length / Math.max(1, last - first);
  return fmtDuration(remaining / rate);
}

function renderCards(st) {
  const s = st.states;
  const card = (n, l, id) => el('div', { class: 'card', id: id || '' },
    el('div', { class: 'n' }, n), el('div', { class: 'l' }, l));
  const pct = st.old_messages > 0 ? Math.round(100 * st.messages / st.old_messages) : 0;
  $('cards').replaceChildren(
    card(st.users.length, 'users'),
    card((s.done || 0) + (s.verified || 0), 'done or verified', 'card-done'),
    card(s.failed || 0, 'failed', 'card-failed'),
    card(st.running, 'running now'),
    card(`${st.messages} / ${st.old_messages}`, `messages on NEW / OLD (${pct}%)`),
    card(st.paused ? 'paused' : 'running', 'scheduler'));
}

function renderWaves(st, cutovers) {
  const byWave = {};
  for (const u of st.users) (byWave[u.wave] = byWave[u.wave] || []).push(u);
  const rows = st.waves.map((w) => {
    const users = byWave[w.name] || [];
    const s = w.states || {};
    const done = (s.done || 0) + (s.verified || 0);
    const failed = s.failed || 0;
    const active = users.filter((u) => u.running).length;
    const co = cutovers[w.name];
    const csv = el('a', { href: '#', class: 'dl report-csv', 'data-wave': w.name }, 'CSV');
    const json = el('a', { href: '#', class: 'dl report-json', 'data-wave': w.name }, 'JSON');
    for (const [a, f] of [[csv, 'csv'], [json, 'json']]) {
      a.addEventListener('click', (ev) => {
        ev.preventDefault();
        download(w.name, f).catch((e) => showError(e));
      });
    }
    return el('tr', { 'data-wave': w.name },
      el('td', {}, w.name, w.paused ? el('span', { class: 'muted' }, ' (paused)') : null),
      el('td', {}, w.users), el('td', {}, done), el('td', {}, failed), el('td', {}, active),
      el('td', {}, bar(done, failed, w.users, { 'data-wave-progress': w.name })),
      el('td', {}, bar(w.messages, 0, w.old_messages, { 'data-wave-messages': w.name })),
      el('td', { 'data-eta': w.name }, eta(users)),
      el('td', {}, co ? `${co.kind} ${co.state}` + (co.at ? ' ' + fmtTime(co.at) : '') : ''),
      el('td', {}, csv, json));
  });
  fill($('waves').tBodies[0], rows);
  const wf = $('wave-filter');
  const known = new Set([...wf.options].map((o) => o.value));
  for (const w of st.waves) if (!known.has(w.name)) wf.append(el('option', { value: w.name }, w.name));
}

function renderUsers(st) {
  const state = $('state-filter').value;
  const wave = $('wave-filter').value;
  const q = $('search').value.trim().toLowerCase();
  const shown = st.users.filter((u) => (!state || u.state === state) &&
    (!wave || u.wave === wave) && (!q || u.name.toLowerCase().includes(q)));
  const rows = shown.slice(0, 500).map((u) => {
    const tr = el('tr', { class: 'clickable', 'data-user': u.name },
      el('td', {}, u.name), el('td', {}, u.wave),
      el('td', {}, stateBadge(u.state + (u.paused ? ',paused' : '') + (u.running ? ' (running)' : ''))),
      el('td', {}, u.attempts),
      el('td', {}, bar(u.messages, 0, u.old_messages)),
      el('td', { class: 'err' }, u.error));
    tr.addEventListener('click', () => { location.hash = 'user=' + encodeURIComponent(u.name); });
    return tr;
  });
  fill($('users').tBodies[0], rows);
  $('user-count').textContent = `${shown.length} of ${st.users.length}` +
    (shown.length > 500 ? ' (first 500 shown)' : '');
}

function logRow(e, withUser) {
  return el('tr', {},
    el('td', {}, fmtTime(e.time)),
    withUser ? el('td', {}, e.user) : null,
    el('td', {}, e.folder), el('td', {}, e.event), el('td', {}, e.copied || ''),
    el('td', { class: e.error.startsWith('result=') ? '' : 'err' }, e.error));
}

// the server's 10-second buckets regrouped into at most 60 bars over the
// whole migration, empty intervals included
function rebucket(series) {
  const raw = series.points;
  if (raw.length === 0) return null;
  const first = raw[0][0];
  const last = raw[raw.length - 1][0];
  const width = Math.max(series.step, Math.ceil((last - first + series.step) / 60 / series.step) * series.step);
  const out = [];
  for (let t = first; t <= last; t += width) out.push([t, 0]);
  for (const [t, n] of raw) out[Math.floor((t - first) / width)][1] += n;
  return { width, pts: out };
}

function renderChart(series) {
  const { width, pts } = rebucket(series) || { width: 0, pts: [] };
  const W = 900, H = 150, pad = 24;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('data-points', String(pts.length));
  const max = Math.max(1, ...pts.map((p) => p[1]));
  const bw = (W - pad) / Math.max(pts.length, 1);
  pts.forEach((p, i) => {
    const h = (H - pad - 12) * p[1] / max;
    const r = document.createElementNS(svg.namespaceURI, 'rect');
    r.setAttribute('x', String(pad + i * bw + 1));
    r.setAttribute('y', String(H - pad / 2 - h));
    r.setAttribute('width', String(Math.max(1, bw - 2)));
    r.setAttribute('height', String(h));
    const t = document.createElementNS(svg.namespaceURI, 'title');
    t.textContent = `${fmtTime(p[0])}: ${p[1]} messages in ${fmtDuration(width)}`;
    r.append(t);
    svg.append(r);
  });
  const label = document.createElementNS(svg.namespaceURI, 'text');
  label.setAttribute('x', '2');
  label.setAttribute('y', '12');
  label.setAttribute('x', String(W - 4));
  label.setAttribute('text-anchor', 'end');
  label.textContent = pts.length ? `highest bar: ${max} messages in ${fmtDuration(width)}; ` +
    `${fmtTime(pts[0][0])} to ${fmtTime(pts[pts.length - 1][0] + width)}` : 'nothing copied yet';
  svg.append(label);
  $('chart').replaceChildren(svg);
}

async function refreshOverview() {
  const [st, log, series] = await Promise.all([
    api('/v1/status'), api('/v1/log?limit=20'), api('/v1/throughput?step=10')]);
  const cutovers = {};
  for (const w of st.waves) if (w.cutover) cutovers[w.name] = w.cutover;
  lastStatus = st;
  renderCards(st);
  renderWaves(st, cutovers);
  renderUsers(st);
  renderChart(series);
  fill($('log').tBodies[0], log.entries.slice().reverse().map((e) => logRow(e, true)));
}

// ---- one user --------------------------------------------------------------

async function refreshUser(name) {
  const q = encodeURIComponent(name);
  const [st, log] = await Promise.all([
    api('/v1/status?user=' + q), api(`/v1/log?user=${q}&limit=100`)]);
  const u = st.users[0];
  // the stored report of the latest verification, if there is one
  const check = u.verify ? await api(`/v1/check?user=${q}&kind=verify`).catch(() => null) : null;
  $('user-name').textContent = u.name;
  const card = (n, l) => el('div', { class: 'card' }, el('div', { class: 'n' }, n),
    el('div', { class: 'l' }, l));
  $('user-cards').replaceChildren(
    card(u.state + (u.paused ? ',paused' : ''), 'state'),
    card(u.wave || '—', 'wave'),
    card(`${u.messages} / ${u.old_messages}`, 'messages on NEW / OLD'),
    card(u.attempts, 'failed attempts'),
    card(u.verify ? (u.verify.result || u.verify.state) : '—', 'verification'),
    card(fmtTime(u.started_at) || '—', 'started'),
    card(fmtTime(u.finished_at) || '—', 'finished'));
  $('user-error').textContent = u.error || '';
  fill($('folders').tBodies[0], u.folders.map((f) => el('tr', {},
    el('td', {}, f.name), el('td', {}, stateBadge(f.state)), el('td', {}, f.old_messages),
    el('td', {}, f.messages), el('td', {}, f.copied), el('td', {}, f.renumbered))));
  $('verify-report').textContent = check && check.text ? check.text :
    (u.verify ? `${u.verify.state} ${u.verify.result} ${u.verify.error || ''}` : 'not verified yet');
  fill($('user-log').tBodies[0], log.entries.slice().reverse().map((e) => logRow(e, false)));
}

// ---- page ------------------------------------------------------------------

function showError(e) {
  if (e instanceof AuthError) {
    logout(e.message);
    return;
  }
  $('updated').textContent = 'error: ' + e.message;
}

function route() {
  const m = /^#user=(.+)$/.exec(location.hash);
  return m ? { user: decodeURIComponent(m[1]) } : { user: null };
}

async function refresh() {
  if (!token) return;
  const r = route();
  $('overview').hidden = !!r.user;
  $('user-page').hidden = !r.user;
  try {
    if (r.user) await refreshUser(r.user);
    else await refreshOverview();
    $('updated').textContent = 'updated ' + fmtTime(Date.now() / 1000);
  } catch (e) {
    showError(e);
  }
}

function start() {
  $('login').hidden = true;
  $('logout').hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

function logout(why) {
  token = null;
  sessionStorage.removeItem('ferry-token');
  clearInterval(timer);
  $('overview').hidden = $('user-page').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why || '';
}

document.addEventListener('DOMContentLoaded', () => {
  // a token handed over in the fragment (#token=...) is moved to session
  // storage and removed from the address bar; fragments are never sent
  const m = /^#token=(.+)$/.exec(location.hash);
  if (m) {
    sessionStorage.setItem('ferry-token', decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  token = sessionStorage.getItem('ferry-token');
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('token-input').value.trim();
    $('token-input').value = '';
    sessionStorage.setItem('ferry-token', token);
    start();
  });
  $('logout').addEventListener('click', () => logout(''));
  $('back').addEventListener('click', (ev) => { ev.preventDefault(); location.hash = ''; });
  for (const id of ['state-filter', 'wave-filter', 'search']) {
    $(id).addEventListener('input', () => { if (lastStatus) renderUsers(lastStatus); });
  }
  window.addEventListener('hashchange', refresh);
  if (token) start();
  else logout('');
});
