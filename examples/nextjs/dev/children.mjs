// Minimal child-process handling for `node dev/stack.mjs` on its own (the
// test passes tests/node/support/processes.mjs's `startChild` instead, which
// has the same shape): output kept in a ring buffer, optional echo, stop with
// SIGTERM then SIGKILL, everything killed when this process exits.

import { spawn } from 'node:child_process';

const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.proc.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

export function startChild(name, cmd, args, options = {}) {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  const lines = [];
  const echo = !!process.env.STACK_ECHO;
  const child = {
    name,
    proc,
    output: () => lines.join('\n'),
    exited: new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal }))),
    async stop(signal = 'SIGTERM', ms = 10_000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return child.exited;
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), ms);
      const status = await child.exited;
      clearTimeout(timer);
      return status;
    },
  };
  for (const src of [proc.stdout, proc.stderr]) {
    let partial = '';
    src.setEncoding('utf8');
    src.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      for (const l of parts) {
        if (echo) process.stderr.write(`[${name}] ${l}\n`);
        lines.push(l);
        if (lines.length > 400) lines.shift();
      }
    });
  }
  children.add(child);
  proc.on('exit', () => children.delete(child));
  return child;
}
