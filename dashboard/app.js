// Tern dashboard: one more MQTT 5 client of the broker (TLS WebSockets, an operator's rights).
// It sends the same tern/fleet/... commands as scripts/tern-fleet and reads the same retained
// summaries; nothing here is a new server protocol. No build step: plain browser JavaScript and
// the vendored MQTT.js bundle (vendor/mqtt.min.js).
//
// Sized for big fleets: the device list is paged by the bridge (devices/page), and per-device
// topics are subscribed only for the rows on screen; deployment summaries are the bridge's
// retained tern/fleet/deployments/{id}; per-phase progress is asked (deployments/{id}/progress)
// only for the deployments shown, at most once a second each.
'use strict';

const PAGE_SIZE = 50;
const FLEET_REFRESH_MS = 3000;
const PROGRESS_MIN_MS = 1000;
const SHOWN_DEPLOYMENTS = 20;
const STATUSES = ['pending', 'sent', 'downloading', 'installing', 'rebooting', 'success', 'already-installed', 'failure', 'aborted'];
const KNOWN_SUMMARY = new Set(['id', 'artifact', 'state', 'phase', 'phases', 'counts', 'total', 'failures',
  'failure_threshold', 'on_threshold', 'retries', 'created', 'reason', 'next_phase_at']);

const $ = (sel) => document.querySelector(sel);

/** Builds an element; children are nodes or text (never parsed as HTML: device data is untrusted). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c));
  return e;
}

function bytes(n) {
  if (!Number.isFinite(n)) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
}

function ago(unix) {
  if (!unix) return 'never';
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return new Date(unix * 1000).toISOString().slice(0, 16).replace('T', ' ');
}

function renderValue(v) { return typeof v === 'object' ? JSON.stringify(v) : String(v); }

// ---- the MQTT session -------------------------------------------------------------------------

const session = {
  client: null,
  user: '',
  replyBase: '',
  nextRequest: 0,
  pending: new Map(),   // reply topic -> {resolve, reject, timer}
  handlers: new Map(),  // topic filter -> (topic, text) => void
};

function topicMatches(filter, topic) {
  const f = filter.split('/'), t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

function subscribe(filter, handler, opts) {
  session.handlers.set(filter, handler);
  session.client.subscribe(filter, Object.assign({ qos: 1 }, opts || {}));
}

function unsubscribe(filter) {
  session.handlers.delete(filter);
  if (session.client) session.client.unsubscribe(filter);
}

/** A command: publishes `body` on tern/fleet/`command` with an MQTT 5 response topic; resolves
 *  with the bridge's reply, rejects with its error text ({"ok":false,"error":...}) or a timeout. */
function request(command, body, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const replyTopic = session.replyBase + '/' + (++session.nextRequest);
    const timer = setTimeout(() => {
      session.pending.delete(replyTopic);
      reject(new Error('no answer from tern-bridge to ' + command + ' within ' + timeoutMs / 1000 + ' s'));
    }, timeoutMs);
    session.pending.set(replyTopic, { resolve, reject, timer });
    session.client.publish('tern/fleet/' + command, JSON.stringify(body || {}),
      { qos: 1, properties: { responseTopic: replyTopic } });
  });
}

function onMessage(topic, payload) {
  const text = new TextDecoder().decode(payload);
  const waiting = session.pending.get(topic);
  if (waiting) {
    session.pending.delete(topic);
    clearTimeout(waiting.timer);
    let reply;
    try { reply = JSON.parse(text); } catch (e) { waiting.reject(new Error('unreadable reply: ' + text)); return; }
    if (reply.ok) waiting.resolve(reply); else waiting.reject(new Error(reply.error || 'refused'));
    return;
  }
  for (const [filter, handler] of session.handlers) {
    if (topicMatches(filter, topic)) handler(topic, text);
  }
}

function setConn(text, on) {
  const c = $('#conn');
  c.textContent = text;
  c.className = 'conn ' + (on ? 'on' : 'off');
}

function login(url, user, password) {
  return new Promise((resolve, reject) => {
    const clientId = 'tern-dash-' + user + '-' + Math.random().toString(16).slice(2, 10);
    const client = mqtt.connect(url, {
      protocolVersion: 5, username: user, password, clientId, clean: true,
      reconnectPeriod: 2000, connectTimeout: 10000,
    });
    let connected = false;
    client.on('connect', () => {
      setConn(user + ' @ ' + url.replace(/^wss:\/\//, ''), true);
      if (connected) { resubscribeAll(); return; }
      connected = true;
      session.client = client;
      session.user = user;
      session.replyBase = 'tern/fleet/replies/' + clientId;
      client.subscribe(session.replyBase + '/+', { qos: 1 });
      resolve();
    });
    client.on('message', onMessage);
    client.on('close', () => setConn('reconnecting…', false));
    client.on('error', (e) => {
      if (!connected) {
        client.end(true);
        const why = e.code === 135 || e.code === 134 || e.code === 5 || e.code === 4
          ? 'the broker refused the login (wrong operator name or password)' : e.message;
        reject(new Error(why));
      }
    });
    setTimeout(() => {
      if (!connected) { client.end(true); reject(new Error('no connection to ' + url + ' (is the broker certificate trusted? open ' + url.replace(/^wss:/, 'https:') + ' once)')); }
    }, 12000);
  });
}

function resubscribeAll() {
  session.client.subscribe(session.replyBase + '/+', { qos: 1 });
  for (const filter of session.handlers.keys()) session.client.subscribe(filter, { qos: 1 });
}

// ---- pages ------------------------------------------------------------------------------------

const pages = { fleet: null, deployments: null, artifacts: null };
let current = '';

function show(name) {
  if (!pages[name]) name = 'fleet';
  if (current === name) return;
  if (current && pages[current].leave) pages[current].leave();
  current = name;
  for (const p of Object.keys(pages)) $('#page-' + p).hidden = p !== name;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === name);
  pages[name].enter();
}

// ---- fleet ------------------------------------------------------------------------------------

const fleet = {
  offset: 0,
  rows: new Map(),        // id -> device record shown
  subscribed: new Set(),  // per-device topics subscribed (exactly the rows on screen)
  selected: '',
  timer: 0,
  inflight: false,

  enter() {
    this.refresh();
    this.timer = setInterval(() => this.refresh(), FLEET_REFRESH_MS);
  },
  leave() {
    clearInterval(this.timer);
    this.syncSubscriptions([]);
  },
  filters() {
    const f = { offset: this.offset, limit: PAGE_SIZE };
    const search = $('#search').value.trim(), adm = $('#f-admission').value, pres = $('#f-presence').value;
    const group = $('#f-group').value.trim();
    if (search) f.search = search;
    if (adm) f.admission = adm;
    if (pres) f.presence = pres;
    if (group) f.group = group;
    return f;
  },
  async refresh() {
    if (this.inflight) return;
    this.inflight = true;
    try {
      const r = await request('devices/page', this.filters());
      this.render(r);
    } catch (e) {
      $('#page-info').textContent = e.message;
    } finally {
      this.inflight = false;
    }
  },
  render(r) {
    const counts = Object.entries(r.presence || {}).map(([k, v]) => v + ' ' + k)
      .concat(Object.entries(r.admission || {}).map(([k, v]) => v + ' ' + k));
    $('#fleet-counts').textContent = r.total + ' devices: ' + counts.join(', ');
    const end = Math.min(r.offset + r.devices.length, r.matched);
    $('#page-info').textContent = r.matched ? (r.offset + 1) + '–' + end + ' of ' + r.matched : 'no device matches';
    $('#prev').disabled = r.offset === 0;
    $('#next').disabled = end >= r.matched;
    const ids = r.devices.map((d) => d.id);
    for (const d of r.devices) {
      const known = this.rows.get(d.id);
      // A retained record received since may be newer than the page; keep its inventory.
      this.rows.set(d.id, Object.assign({}, known, d));
    }
    for (const id of [...this.rows.keys()]) if (!ids.includes(id)) this.rows.delete(id);
    // Rows whose record did not change stay the same elements (a click in flight still lands).
    const body = $('#devices tbody');
    const shown = new Map([...body.children].map((tr) => [tr.dataset.device, tr]));
    const rows = ids.map((id) => {
      const tr = shown.get(id), d = this.rows.get(id);
      return tr && tr.dataset.record === JSON.stringify(d) ? tr : this.row(d);
    });
    if (rows.length !== body.children.length || rows.some((tr, i) => body.children[i] !== tr)) body.replaceChildren(...rows);
    this.syncSubscriptions(ids);
  },
  row(d) {
    const actions = [];
    if (d.admission !== 'accepted') actions.push(el('button', { class: 'primary', dataset: { action: 'accept' }, onclick: (e) => { e.stopPropagation(); this.admit(d.id, 'accept'); } }, 'Accept'));
    if (d.admission === 'pending' || d.admission === 'accepted') actions.push(el('button', { class: 'danger', dataset: { action: 'reject' }, onclick: (e) => { e.stopPropagation(); this.admit(d.id, 'reject'); } }, 'Reject'));
    return el('tr', { dataset: { device: d.id, record: JSON.stringify(d) }, class: d.id === this.selected ? 'selected' : '', onclick: () => this.select(d.id) },
      el('td', { class: 'mono' }, d.id),
      el('td', {}, el('span', { class: 'dot ' + d.presence, dataset: { field: 'presence' } }, d.presence)),
      el('td', {}, el('span', { class: 'badge ' + d.admission, dataset: { field: 'admission' } }, d.admission)),
      el('td', {}, d.group || ''),
      el('td', {}, d.device_type || ''),
      el('td', { dataset: { field: 'artifact' } }, d.artifact_name || ''),
      el('td', { title: d.last_seen ? new Date(d.last_seen * 1000).toISOString() : '' }, ago(d.last_seen)),
      el('td', {}, actions));
  },
  /** Subscribes the retained records of exactly the devices on screen. */
  syncSubscriptions(ids) {
    const want = new Set(ids.map((id) => 'tern/fleet/devices/' + id));
    for (const t of this.subscribed) if (!want.has(t)) { unsubscribe(t); this.subscribed.delete(t); }
    for (const t of want) {
      if (this.subscribed.has(t)) continue;
      this.subscribed.add(t);
      subscribe(t, (topic, text) => this.record(topic, text));
    }
  },
  record(topic, text) {
    const id = topic.split('/')[3];
    if (!this.rows.has(id) || !text) return;
    let d;
    try { d = JSON.parse(text); } catch (e) { return; }
    this.rows.set(id, d);
    const old = document.querySelector('#devices tr[data-device="' + CSS.escape(id) + '"]');
    if (old && old.dataset.record !== JSON.stringify(d)) old.replaceWith(this.row(d));
    if (this.selected === id) this.detail(d);
  },
  select(id) {
    this.selected = id;
    for (const tr of document.querySelectorAll('#devices tbody tr')) tr.classList.toggle('selected', tr.dataset.device === id);
    this.detail(this.rows.get(id));
  },
  detail(d) {
    const panel = $('#device-detail');
    panel.hidden = false;
    const inv = d.inventory || {};
    const keys = Object.keys(inv).sort();
    panel.replaceChildren(
      el('h3', {}, 'Inventory of ', el('span', { class: 'mono' }, d.id)),
      keys.length ? el('table', { class: 'kv', id: 'inventory' }, keys.map((k) => el('tr', {}, el('td', {}, k), el('td', { class: 'mono' }, renderValue(inv[k])))))
        : el('p', { class: 'hint' }, 'No inventory yet.'));
  },
  async admit(id, verb) {
    try {
      await request('devices/' + id + '/' + verb, {});
      this.refresh();
    } catch (e) {
      alert(verb + ' ' + id + ': ' + e.message);
    }
  },
};
pages.fleet = fleet;

// ---- deployments --------------------------------------------------------------------------------

const deployments = {
  summaries: new Map(),  // id -> retained summary
  progress: new Map(),   // id -> {data, asked, timer}
  subscribed: false,

  enter() {
    if (!this.subscribed) {
      this.subscribed = true;
      subscribe('tern/fleet/deployments/+', (topic, text) => this.summary(topic, text));
    }
    this.loadArtifacts();
    this.render();
  },
  summary(topic, text) {
    const id = topic.split('/')[3];
    if (!text) { this.summaries.delete(id); this.render(); return; }
    let s;
    try { s = JSON.parse(text); } catch (e) { return; }
    if (!s || typeof s !== 'object' || !s.state) return;  // a command another operator sent, not a summary
    this.summaries.set(id, s);
    this.askProgress(id);
    if (current === 'deployments') this.render();
  },
  shown() {
    return [...this.summaries.values()].sort((a, b) => (b.created || 0) - (a.created || 0) || (a.id < b.id ? 1 : -1))
      .slice(0, SHOWN_DEPLOYMENTS);
  },
  /** Per-phase progress, only for shown deployments, at most once per PROGRESS_MIN_MS each. */
  askProgress(id) {
    if (!this.shown().some((s) => s.id === id)) return;
    const p = this.progress.get(id) || { data: null, asked: 0, timer: 0 };
    this.progress.set(id, p);
    if (p.timer) return;
    const wait = Math.max(0, p.asked + PROGRESS_MIN_MS - Date.now());
    p.timer = setTimeout(async () => {
      p.timer = 0;
      p.asked = Date.now();
      try {
        p.data = await request('deployments/' + id + '/progress', {});
        if (current === 'deployments') this.render();
      } catch (e) { /* the summary still shows the counts */ }
    }, wait);
  },
  render() {
    const list = $('#deployments');
    const shown = this.shown();
    const legend = el('p', { class: 'legend' }, 'Statuses:', STATUSES.map((k) => el('span', { class: 's-' + k }, k)), el('span', { class: 's-other' }, 'other'));
    list.replaceChildren(legend, ...shown.map((s) => this.card(s)));
    if (this.summaries.size > shown.length) list.append(el('p', { class: 'hint' }, (this.summaries.size - shown.length) + ' older deployments not shown.'));
    if (!shown.length) list.append(el('p', { class: 'hint' }, 'No deployments yet.'));
  },
  card(s) {
    const open = s.state === 'running' || s.state === 'paused' || s.state === 'created';
    const actions = [];
    if (s.state === 'paused') actions.push(el('button', { class: 'primary', dataset: { action: 'resume' }, onclick: () => this.command(s.id, 'resume') }, 'Resume'));
    if (open) actions.push(el('button', { class: 'danger', dataset: { action: 'abort' }, onclick: () => this.command(s.id, 'abort') }, 'Abort'));
    const p = this.progress.get(s.id);
    const phases = p && p.data ? p.data.phases : null;
    const failures = p && p.data && p.data.failures ? p.data.failures : (s.failures || []);
    const extras = Object.keys(s).filter((k) => !KNOWN_SUMMARY.has(k));
    return el('div', { class: 'deployment', dataset: { id: s.id, state: s.state } },
      el('div', { class: 'head' },
        el('span', { class: 'id mono' }, s.id),
        el('span', {}, s.artifact),
        el('span', { class: 'badge ' + s.state, dataset: { field: 'state' } }, s.state),
        el('span', { class: 'hint' }, 'phase ' + s.phase + ' of ' + (s.phases || []).length + ' (' + (s.phases || []).join('/') + ' %)',
          ', threshold ' + s.failure_threshold + ' % then ' + s.on_threshold, s.retries ? ', ' + s.retries + ' retries' : ''),
        s.reason ? el('span', { class: 'error' }, s.reason) : null,
        el('span', { class: 'actions' }, actions)),
      el('div', { class: 'phase' }, el('span', { class: 'label' }, 'all ' + s.total + ' devices'), this.bar(s.counts || {}, s.total), el('span', { class: 'bytes' }, this.countText(s.counts || {}))),
      phases ? phases.map((ph) => el('div', { class: 'phase', dataset: { phase: ph.phase } },
        el('span', { class: 'label' }, 'phase ' + ph.phase + ' (' + ph.percent + ' %): ' + ph.devices),
        this.bar(ph.counts, ph.devices),
        el('span', { class: 'bytes' }, ph.total_bytes ? bytes(ph.bytes) + ' of ' + bytes(ph.total_bytes) : ''))) : null,
      extras.length ? el('div', { class: 'extra' }, extras.map((k) => el('span', { dataset: { field: k } }, k.replace(/_/g, ' ') + ': ' + renderValue(s[k]) + '  '))) : null,
      failures.length ? el('ul', { class: 'failures' }, failures.map((f) => el('li', { dataset: { device: f.device } },
        el('span', { class: 'dev' }, f.device), ' ', f.status, f.attempt > 1 ? ' (attempt ' + f.attempt + ')' : '', ': ', f.error || 'no reason given',
        Object.keys(f).filter((k) => !['device', 'status', 'error', 'attempt', 'phase', 'updated'].includes(k)).map((k) => ' [' + k + ': ' + renderValue(f[k]) + ']')))) : null);
  },
  bar(counts, total) {
    const keys = Object.keys(counts).sort((a, b) => {
      const ia = STATUSES.indexOf(a), ib = STATUSES.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
    });
    const bar = el('div', { class: 'bar' });
    for (const k of keys) {
      const seg = el('span', { class: STATUSES.includes(k) ? 's-' + k : 's-other', title: counts[k] + ' ' + k, dataset: { status: k } });
      seg.style.width = (total ? 100 * counts[k] / total : 0) + '%';
      bar.append(seg);
    }
    return bar;
  },
  countText(counts) {
    return Object.entries(counts).map(([k, v]) => v + ' ' + k).join(', ');
  },
  async command(id, verb) {
    try {
      await request('deployments/' + id + '/' + verb, {});
    } catch (e) {
      alert(verb + ' ' + id + ': ' + e.message);
    }
  },
  async loadArtifacts() {
    try {
      const r = await request('artifacts/list', {});
      const sel = $('#c-artifact');
      const was = sel.value;
      sel.replaceChildren(...r.artifacts.map((a) => el('option', { value: a.name }, a.name + ' (' + a.device_types.join(', ') + ')')));
      if (was) sel.value = was;
    } catch (e) { $('#create-result').textContent = e.message; }
  },
  async create(ev) {
    ev.preventDefault();
    const out = $('#create-result');
    const body = { artifact_name: $('#c-artifact').value };
    const target = $('#c-target').value, value = $('#c-target-value').value.trim();
    if (target === 'all') body.all = true;
    else if (target === 'devices') body.devices = value.split(/[\s,]+/).filter(Boolean);
    else body[target] = value;
    body.phases = $('#c-phases').value.split(/[\s,]+/).filter(Boolean).map(Number);
    body.failure_threshold = Number($('#c-threshold').value);
    body.on_threshold = $('#c-on-threshold').value;
    body.retries = Number($('#c-retries').value);
    out.className = 'result';
    out.textContent = 'creating…';
    try {
      const r = await request('deployments/create', body);
      out.textContent = 'created ' + r.id + ' for ' + r.devices + ' devices' + (r.skipped_count ? ', ' + r.skipped_count + ' skipped' : '');
    } catch (e) {
      out.className = 'result error';
      out.textContent = e.message;
    }
  },
};
pages.deployments = deployments;

// ---- artifacts ----------------------------------------------------------------------------------

const artifacts = {
  async enter() {
    try {
      const r = await request('artifacts/list', {});
      $('#artifacts tbody').replaceChildren(...r.artifacts.map((a) => el('tr', { dataset: { artifact: a.name } },
        el('td', { class: 'mono' }, a.name),
        el('td', {}, a.device_types.join(', ')),
        el('td', {}, bytes(a.size)),
        el('td', { class: 'mono', title: a.sha256 }, a.sha256.slice(0, 12) + '…'),
        el('td', { class: 'mono', title: a.signed_by || '' }, a.signed ? (a.signed_by ? 'fleet key ' + a.signed_by.slice(0, 23) + '…' : 'fleet key') : 'unsigned'),
        el('td', { class: 'mono' }, a.file))));
    } catch (e) { $('#rescan-result').textContent = e.message; }
  },
  async rescan() {
    try {
      const r = await request('artifacts/rescan', {}, 60000);
      $('#rescan-result').textContent = r.result;
      this.enter();
    } catch (e) { $('#rescan-result').textContent = e.message; }
  },
};
pages.artifacts = artifacts;

// ---- wiring -------------------------------------------------------------------------------------

function start() {
  const params = new URLSearchParams(location.search);
  $('#broker').value = params.get('broker') || localStorage.getItem('tern.broker') || 'wss://' + location.hostname + ':8885';
  $('#user').value = params.get('user') || localStorage.getItem('tern.user') || '';
  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const url = $('#broker').value.trim(), user = $('#user').value.trim();
    $('#login-error').textContent = 'connecting…';
    try {
      await login(url, user, $('#password').value);
    } catch (e) {
      $('#login-error').textContent = e.message;
      return;
    }
    localStorage.setItem('tern.broker', url);
    localStorage.setItem('tern.user', user);
    $('#login-error').textContent = '';
    $('#login').hidden = true;
    $('#nav').hidden = false;
    $('#logout').hidden = false;
    show((location.hash || '#fleet').slice(1));
  });
  $('#logout').addEventListener('click', () => { if (session.client) session.client.end(true); location.reload(); });
  window.addEventListener('hashchange', () => { if (session.client) show(location.hash.slice(1)); });

  let searchTimer = 0;
  const refilter = () => { fleet.offset = 0; clearTimeout(searchTimer); searchTimer = setTimeout(() => fleet.refresh(), 250); };
  $('#search').addEventListener('input', refilter);
  $('#f-group').addEventListener('input', refilter);
  $('#f-admission').addEventListener('change', refilter);
  $('#f-presence').addEventListener('change', refilter);
  $('#prev').addEventListener('click', () => { fleet.offset = Math.max(0, fleet.offset - PAGE_SIZE); fleet.refresh(); });
  $('#next').addEventListener('click', () => { fleet.offset += PAGE_SIZE; fleet.refresh(); });
  $('#preauth-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const out = $('#preauth-result');
    const body = { devices: $('#preauth-ids').value.split(/[\s,]+/).filter(Boolean) };
    const group = $('#preauth-group').value.trim();
    if (group) body.group = group;
    try {
      const r = await request('devices/preauthorize', body);
      out.className = 'result';
      out.textContent = 'accepted ' + r.devices.join(', ');
      fleet.refresh();
    } catch (e) { out.className = 'result error'; out.textContent = e.message; }
  });
  $('#create-form').addEventListener('submit', (ev) => deployments.create(ev));
  $('#rescan').addEventListener('click', () => artifacts.rescan());
}

document.addEventListener('DOMContentLoaded', start);
