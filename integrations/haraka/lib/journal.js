'use strict'
// What this Haraka process holds at the agent (connection slots, inbound connection
// counts), written down before it is taken and struck out once given back. The agent
// holds them for its node, not per Haraka process: a Haraka killed with -9 would leave
// them taken while the agent lives. The next Haraka to start on the same folder reads the
// journals of processes that are gone and gives back what they still held.
//
// One append-only file per process run, <dir>/<pid>-<start ms>.journal (a restarted
// Haraka in a container often gets its old pid back), one JSON object a line:
//   {"op": "+", "id": "...", ...entry}   taken
//   {"op": "-", "id": "..."}             given back
// Written synchronously (appendFileSync): an entry is on disk before the agent is asked,
// so a crash can only leave an entry for something never taken (giving it back is a no-op
// for a slot; inbound counts are given back only to the same agent run, see index.js).

const fs = require('node:fs')
const path = require('node:path')

// Rewrite a journal to its live entries once it has this many lines.
const COMPACT_LINES = 10_000

function alive(pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return err.code === 'EPERM'
  }
}

function read_live(file) {
  const live = new Map()
  let text = ''
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch {
    return live
  }
  for (const line of text.split('\n')) {
    if (!line) continue
    let rec
    try {
      rec = JSON.parse(line)
    } catch {
      continue // a line cut by the crash
    }
    if (rec.op === '+') live.set(rec.id, rec)
    else if (rec.op === '-') live.delete(rec.id)
  }
  return live
}

class Journal {
  constructor(dir) {
    this.dir = dir
    fs.mkdirSync(dir, { recursive: true })
    this.me = `${process.pid}-${Date.now()}`
    this.file = path.join(dir, `${this.me}.journal`)
    fs.writeFileSync(this.file, '')
    this.live = new Map()
    this.lines = 0
  }

  add(id, entry) {
    const rec = { op: '+', id, ...entry }
    this.write(rec)
    this.live.set(id, rec)
  }

  remove(id) {
    if (!this.live.delete(id)) return
    this.write({ op: '-', id })
    if (this.lines >= COMPACT_LINES) this.compact()
  }

  write(rec) {
    fs.appendFileSync(this.file, `${JSON.stringify(rec)}\n`)
    this.lines++
  }

  compact() {
    const tmp = `${this.file}.tmp`
    const text = [...this.live.values()].map((rec) => `${JSON.stringify(rec)}\n`).join('')
    fs.writeFileSync(tmp, text)
    fs.renameSync(tmp, this.file)
    this.lines = this.live.size
  }

  // Is the process run "<pid>-<start>" over? (A live pid of another run than ours cannot
  // be told from a reused one: it is taken for alive, and its journal waits.)
  gone(run) {
    const [pid] = run.split('-')
    if (Number(pid) === process.pid) return run !== this.me
    return !alive(Number(pid))
  }

  // Journals of process runs that are over, each claimed by renaming it (two Harakas
  // starting together never both give the same entries back): [{file, entries}]
  orphans() {
    const out = []
    let names = []
    try {
      names = fs.readdirSync(this.dir)
    } catch {
      return out
    }
    for (const name of names) {
      // <run>.journal, or <run>.journal.claimed.<claiming run> (a claim whose run is over
      // is claimed again)
      const m = /^(\d+-\d+)\.journal(?:\.claimed\.(\d+-\d+))?$/.exec(name)
      if (!m || !this.gone(m[1])) continue
      if (m[2] && (m[2] === this.me || !this.gone(m[2]))) continue
      const claimed = path.join(this.dir, `${m[1]}.journal.claimed.${this.me}`)
      try {
        fs.renameSync(path.join(this.dir, name), claimed)
      } catch {
        continue // another process claimed it first
      }
      out.push({ file: claimed, entries: [...read_live(claimed).values()] })
    }
    return out
  }
}

module.exports = { Journal }
