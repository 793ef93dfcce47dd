// The library's JavaScript kernel (issue 33): run as `node -e <this file>` inside a sandbox,
// as the sandbox's user, by `CodeContext`. Node's standard library only.
//
// Requests: one JSON object per line on stdin ({"t": "run", "code": "...", "limit": n}).
// Replies: a record separator (\x1e) and one JSON object per line on stdout, as the Python
// kernel's (src/sandbox/code/protocol.rs). Each cell runs in one persistent `vm` context
// (its globals, functions and `var`s persist; a promise it ends with is awaited); its
// `console` replies as streams; a raw write to the process's stdout arrives as stdout.
'use strict';
const fs = require('fs');
const vm = require('vm');
const util = require('util');
const readline = require('readline');

const send = (m) => {
  // Lone surrogates become U+FFFD: the host reads strict UTF-8.
  const line = '\x1e' + JSON.stringify(m).toWellFormed() + '\n';
  let buf = Buffer.from(line);
  while (buf.length > 0) {
    try {
      const n = fs.writeSync(1, buf);
      buf = buf.subarray(n);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
};

let limit = Infinity;
let sent = [0, 0];
let dropped = [0, 0];
const stream = (index, text) => {
  const data = Buffer.from(text);
  const room = Math.max(limit - sent[index], 0);
  if (data.length > room) {
    dropped[index] += data.length - room;
    text = data.subarray(0, room).toString();
  }
  sent[index] += Math.min(data.length, room);
  if (text.length > 0) send({ t: 'stream', n: index === 0 ? 'stdout' : 'stderr', s: text });
};

const fmt = (args) => util.format(...args) + '\n';
const sandboxConsole = {
  log: (...a) => stream(0, fmt(a)),
  info: (...a) => stream(0, fmt(a)),
  debug: (...a) => stream(0, fmt(a)),
  warn: (...a) => stream(1, fmt(a)),
  error: (...a) => stream(1, fmt(a)),
  dir: (o) => stream(0, util.inspect(o) + '\n'),
  table: (o) => stream(0, util.inspect(o) + '\n'),
};

const bundle = (value) => {
  const data = { 'text/plain': util.inspect(value) };
  if (value !== null && typeof value === 'object') {
    for (const [method, mime] of [['_repr_html_', 'text/html'], ['_repr_markdown_', 'text/markdown'], ['_repr_svg_', 'image/svg+xml']]) {
      if (typeof value[method] === 'function') {
        try { data[mime] = String(value[method]()); } catch (e) { /* left out */ }
      }
    }
    // Plain objects and arrays (of the cell's realm: not this file's `Object`) as JSON too.
    const plain = Object.prototype.toString.call(value) === '[object Object]'
      && (value.constructor === undefined || value.constructor.name === 'Object');
    if (plain || Array.isArray(value)) {
      try { data['application/json'] = JSON.parse(JSON.stringify(value)); } catch (e) { /* left out */ }
    }
  }
  return data;
};

const display = (...values) => {
  for (const v of values) send({ t: 'display', data: bundle(v), main: false });
};

const context = vm.createContext({
  console: sandboxConsole, display, require, process, Buffer, URL, URLSearchParams,
  TextEncoder, TextDecoder, setTimeout, clearTimeout, setInterval, clearInterval,
  setImmediate, clearImmediate, queueMicrotask, structuredClone,
});
context.globalThis = context;

// An interrupt between cells has nothing to stop; during one, breakOnSigint throws.
process.on('SIGINT', () => {});
// A callback's throw or a forgotten rejection after its cell is stderr, not the kernel's end.
const late = (e) => stream(1, `Uncaught ${e && e.stack ? e.stack : String(e)}\n`);
process.on('uncaughtException', late);
process.on('unhandledRejection', late);

let count = 0;
const run = async (req) => {
  count += 1;
  limit = Number(req.limit) > 0 ? Number(req.limit) : Infinity;
  sent = [0, 0];
  dropped = [0, 0];
  const before = process.cpuUsage();
  let ok = true;
  try {
    let value = vm.runInContext(String(req.code || ''), context, {
      filename: `<cell ${count}>`,
      breakOnSigint: true,
      displayErrors: false,
    });
    if (value && typeof value.then === 'function') value = await value;
    if (value !== undefined) send({ t: 'display', data: bundle(value), main: true });
  } catch (e) {
    ok = false;
    // The cell's errors are of its own realm: not `instanceof` this file's `Error`.
    const err = e !== null && typeof e === 'object' && 'message' in e ? e : new Error(String(e));
    const interrupted = err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
    send({
      t: 'error',
      ename: interrupted ? 'KeyboardInterrupt' : (err.name || 'Error'),
      evalue: err.message || String(e),
      // The message, then the cell's own frames (the kernel's are left out).
      traceback: String(err.stack || err).split('\n')
        .filter((l, i) => i === 0 || l.includes('<cell '))
        .map((l) => l + '\n'),
    });
  }
  // The run's marker on stderr: what the cell wrote there before it is the cell's.
  try { fs.writeSync(2, '\x1e' + String(req.id || '') + '\n'); } catch (e) { /* no stderr */ }
  const used = process.cpuUsage(before);
  send({
    t: 'done', id: String(req.id || ''), count, ok, cpu_ms: (used.user + used.system) / 1000,
    rss_kib: Math.round(process.memoryUsage().rss / 1024), dropped,
  });
};

let queue = Promise.resolve();
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  let req;
  try { req = JSON.parse(line); } catch (e) { return; }
  if (!req || req.t !== 'run') return;
  queue = queue.then(() => run(req));
});
lines.on('close', () => { queue.then(() => process.exit(0)); });
send({ t: 'ready', version: process.version });
