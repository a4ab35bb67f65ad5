#!/usr/bin/env node
// A real TimescaleDB (PostgreSQL 17 + TimescaleDB compiled to WASM by PGlite) served over TCP,
// so vaultkeeper's tests can talk to it with psycopg like to any PostgreSQL server.
//
// Usage: node serve.mjs [--port N] [--host 127.0.0.1] [--data-dir DIR] [--max-connections N]
//
//   --port 0 (the default) lets the OS pick a free port; the chosen one is printed.
//   --data-dir keeps the cluster in DIR (created by PGlite); without it the data lives in memory.
//   --max-connections defaults to 1: PGlite has ONE backend session, and two overlapping
//     transactions from two clients deadlock it, so a second client is refused instead.
//
// Once it accepts connections it prints exactly one line to stdout:
//   READY host=127.0.0.1 port=NNNNN timescaledb=2.x.y postgres=17.x
// It stops on SIGTERM/SIGINT and also when its stdin reaches EOF (its parent died), so a
// crashed test run leaves no server behind.
//
// Known limits of this build (see shared/notes/real-components.md): COPY FROM STDIN kills the
// database (use INSERT); connect with sslmode=disable; background jobs never run by themselves
// (CALL run_job(id)); pg_dump 15 refuses the PostgreSQL 17 server.

import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'
import { parseArgs } from 'node:util'

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'data-dir': { type: 'string' },
    'max-connections': { type: 'string', default: '1' },
    debug: { type: 'boolean', default: false },
  },
})

const started = Date.now()
const db = await PGlite.create({
  dataDir: args['data-dir'] ?? undefined,
  extensions: { timescaledb },
})
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
const versions = await db.query(
  "SELECT extversion AS ts, current_setting('server_version') AS pg " +
    "FROM pg_extension WHERE extname = 'timescaledb'",
)

const server = new PGLiteSocketServer({
  db,
  host: args.host,
  port: Number(args.port),
  maxConnections: Number(args['max-connections']),
  debug: args.debug,
})
await server.start()
let stopping = false
async function stop(code) {
  if (stopping) return
  stopping = true
  setTimeout(() => process.exit(code), 3000).unref() // a query may still be running
  try {
    await server.stop()
    await db.close()
  } finally {
    process.exit(code)
  }
}
process.on('SIGTERM', () => stop(0))
process.on('SIGINT', () => stop(0))
process.stdin.on('end', () => stop(0))
process.stdin.on('error', () => stop(0))
process.stdin.resume()

const [, port] = server.getServerConn().split(/:(?=[0-9]+$)/)
const { ts, pg } = versions.rows[0]
process.stdout.write(
  `READY host=${args.host} port=${port} timescaledb=${ts} postgres=${pg} ` +
    `startup_ms=${Date.now() - started}\n`,
)

