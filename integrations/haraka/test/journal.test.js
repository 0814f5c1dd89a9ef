'use strict'
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { test } = require('node:test')

const { Journal } = require('../lib/journal')

function tmpdir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'mcluster-journal-'))
}

test('a live journal is never an orphan; a dead process run is, once', () => {
  const dir = tmpdir()
  const line = (rec) => `${JSON.stringify(rec)}\n`
  // a run that is over (pid 2**22 + 1 is above Linux's pid_max): slot b still held, the
  // last line cut by the crash
  fs.writeFileSync(
    path.join(dir, '4194305-1.journal'),
    line({ op: '+', id: 'slot:a', kind: 'slot', slot: 'a' }) +
      line({ op: '+', id: 'slot:b', kind: 'slot', slot: 'b' }) +
      line({ op: '-', id: 'slot:a' }) +
      '{"op":"+","id"',
  )
  // an earlier run of this very pid (a container restart)
  fs.writeFileSync(path.join(dir, `${process.pid}-5.journal`), line({ op: '+', id: 'x', kind: 'slot', slot: 'x' }))
  const j = new Journal(dir)
  j.add('slot:z', { kind: 'slot', slot: 'z' })
  const orphans = j.orphans()
  const held = orphans.flatMap((o) => o.entries.map((e) => e.slot)).sort()
  assert.deepEqual(held, ['b', 'x'])
  assert.deepEqual(j.orphans(), []) // claimed: not handed out twice
  assert.ok(fs.existsSync(j.file))
})

test('remove strikes an entry out; compaction keeps only the live ones', () => {
  const dir = tmpdir()
  const j = new Journal(dir)
  for (let i = 0; i < 5; i++) j.add(`slot:${i}`, { kind: 'slot', slot: String(i) })
  for (let i = 0; i < 4; i++) j.remove(`slot:${i}`)
  j.remove('slot:unknown') // nothing written
  assert.equal(fs.readFileSync(j.file, 'utf8').trim().split('\n').length, 9)
  j.compact()
  const lines = fs.readFileSync(j.file, 'utf8').trim().split('\n')
  assert.deepEqual(lines.map((l) => JSON.parse(l).id), ['slot:4'])
})
