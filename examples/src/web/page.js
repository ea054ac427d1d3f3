// The teacher's page: follows /events (Server-Sent Events) and shows what
// the mail server sees. Every text from a student goes in with textContent,
// never as HTML.
'use strict';

const MAX_CONNECTIONS = 60;
const MAX_LINES = 200;

const conns = new Map(); // id -> { card, lines, state }
const openParts = new Set(); // keys of <details> the teacher opened

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function octets(n) {
  if (n >= 1048576) return (n / 1048576).toFixed(1) + ' MiB';
  if (n >= 1024) return (n / 1024).toFixed(1) + ' KiB';
  return n + ' octets';
}

function setStatus(state, text) {
  document.body.dataset.state = state;
  document.getElementById('status').textContent = text;
}

// --- connections -----------------------------------------------------------

function connection(id, protocol) {
  let c = conns.get(id);
  if (c) return c;
  const list = document.getElementById('connections');
  const empty = list.querySelector('.empty');
  if (empty) empty.remove();
  const card = el('div', 'conn');
  card.dataset.id = id;
  const head = el('div', 'conn-head', '#' + id + ' ' + protocol.toUpperCase());
  const state = el('span', 'state', 'open');
  head.append(state);
  const lines = el('div', 'lines');
  card.append(head, lines);
  list.prepend(card);
  c = { card, lines, state };
  conns.set(id, c);
  while (conns.size > MAX_CONNECTIONS) {
    const [oldest] = conns.keys();
    conns.get(oldest).card.remove();
    conns.delete(oldest);
  }
  return c;
}

function addLine(c, line) {
  const row = el('div', 'line ' + line.said);
  const who = { C: 'C:', S: 'S:', note: '--', error: '!!' }[line.said] || '';
  row.append(el('span', 'who', who), el('span', 'text', line.text));
  c.lines.append(row);
  while (c.lines.childElementCount > MAX_LINES) c.lines.firstElementChild.remove();
  c.lines.scrollTop = c.lines.scrollHeight; // the newest line in view
}

function setClosed(c) {
  c.card.classList.add('closed');
  c.state.textContent = 'closed';
}

// --- mailboxes -------------------------------------------------------------

function part(key, title, text) {
  const d = el('details', 'part');
  d.dataset.key = key;
  d.open = openParts.has(key);
  d.addEventListener('toggle', () => (d.open ? openParts.add(key) : openParts.delete(key)));
  d.append(el('summary', null, title), el('pre', null, text));
  return d;
}

function showMailboxes(mailboxes) {
  const box = document.getElementById('mailboxes');
  box.replaceChildren();
  if (mailboxes.length === 0) {
    box.append(el('p', 'empty', 'No mail yet.'));
    return;
  }
  for (const mb of mailboxes) {
    const m = el('div', 'mailbox');
    const name = el('div', 'mailbox-name', mb.name);
    name.append(el('span', 'mailbox-count',
      mb.count + (mb.count === 1 ? ' message, ' : ' messages, ') + octets(mb.size)));
    m.append(name);
    for (const msg of mb.messages) {
      const key = mb.name + '/' + msg.uid;
      const d = el('details', 'msg');
      d.dataset.key = key;
      d.open = openParts.has(key);
      d.addEventListener('toggle', () => (d.open ? openParts.add(key) : openParts.delete(key)));
      const s = el('summary');
      s.append(el('span', 'subject', msg.subject === null ? '(no subject)' : msg.subject),
        el('span', 'meta', '  from ' + (msg.from || '?') + ', ' + octets(msg.size)));
      d.append(s,
        part(key + '#h', 'Headers', msg.headers),
        part(key + '#b', 'Body', msg.body),
        part(key + '#s', 'Source' + (msg.more > 0 ? ' (first part; ' + octets(msg.more) + ' more)' : ''), msg.source));
      m.append(d);
    }
    if (mb.count > mb.messages.length) {
      m.append(el('div', 'cut', (mb.count - mb.messages.length) + ' older not shown'));
    }
    box.append(m);
  }
}

// --- queue -------------------------------------------------------------------

function showQueue(queue) {
  const box = document.getElementById('queue');
  box.replaceChildren();
  if (queue.length === 0) {
    box.append(el('p', 'empty', 'Nothing waiting.'));
    return;
  }
  for (const q of queue) {
    const d = el('div', 'queued');
    d.append(el('div', 'meta', 'from ' + q.from + ', ' + octets(q.size) +
      (q.subject === null ? '' : ': ' + q.subject)));
    for (const r of q.recipients) {
      const row = el('div', 'rcpt');
      row.append(el('span', 'to', r.to), el('span', 'state ' + r.state, r.state),
        el('span', 'detail', r.detail));
      d.append(row);
    }
    box.append(d);
  }
}

// --- the stream ----------------------------------------------------------------

function snapshot(ev) {
  conns.clear();
  const list = document.getElementById('connections');
  list.replaceChildren();
  if (ev.connections.length === 0) {
    list.append(el('p', 'empty', 'No connection yet: telnet to port 25 or 110.'));
  }
  for (const c of ev.connections) {
    const shown = connection(c.id, c.protocol);
    if (c.cut > 0) shown.lines.append(el('div', 'cut', c.cut + ' earlier lines not kept'));
    for (const line of c.lines) addLine(shown, line);
    if (!c.open) setClosed(shown);
  }
  showMailboxes(ev.mailboxes);
  showQueue(ev.queue);
}

function handle(ev) {
  switch (ev.type) {
    case 'snapshot': snapshot(ev); break;
    case 'line': {
      const c = connection(ev.id, ev.protocol);
      addLine(c, ev);
      // New activity moves its connection to the top.
      if (c.card !== c.card.parentNode.firstElementChild) c.card.parentNode.prepend(c.card);
      break;
    }
    case 'closed': { const c = conns.get(ev.id); if (c) setClosed(c); break; }
    case 'mailboxes': showMailboxes(ev.mailboxes); break;
    case 'queue': showQueue(ev.queue); break;
  }
}

function follow() {
  const source = new EventSource('/events');
  source.onopen = () => setStatus('live', 'live');
  source.onerror = () => setStatus('reconnecting', 'reconnecting…');
  source.onmessage = (m) => {
    handle(JSON.parse(m.data));
    if (document.body.dataset.state !== 'live') setStatus('live', 'live');
  };
}

follow();
