'use strict'
// The slot opened at Haraka's try_deliver: what is reported of the MX about to be tried
// (host, address, the domain's MX hosts), the spill-over to the siblings a refusal names,
// the deferral when none has room, and the slot of an MX never connected to given back.
const assert = require('node:assert/strict')
const { test } = require('node:test')

const plugin = require('../index')

const MXS = [
  { exchange: '192.0.2.1', from_dns: 'MX1.example.test', priority: 10 },
  { exchange: '192.0.2.2', from_dns: 'mx1.example.test', priority: 10 },
  { exchange: '192.0.2.3', from_dns: 'mx2.example.test', priority: 20 },
  { exchange: '192.0.2.4', from_dns: 'mx3.example.test', priority: 30 },
]

test('the MX about to be tried: its name, its address, the MX hosts in order', () => {
  assert.deepEqual(plugin.mx_route(MXS), {
    host: 'mx1.example.test',
    ip: '192.0.2.1',
    mx_hosts: ['mx1.example.test', 'mx2.example.test', 'mx3.example.test'],
  })
  // an implicit MX (the domain's A record): no siblings; a socket path: no address
  assert.deepEqual(plugin.mx_route([{ exchange: '192.0.2.9', from_dns: 'example.test' }]), {
    host: 'example.test',
    ip: '192.0.2.9',
  })
  assert.deepEqual(plugin.mx_route([{ path: '/run/lmtp.sock' }]), {})
})

function fake(answers) {
  const opened = []
  const closed = []
  const self = Object.create(plugin)
  self.cfg = { main: { retry_seconds: 60, fail: 'closed' }, outbound: { cap_retry_seconds: 1 } }
  self.lease = { owner: 'haraka-h-1', held: new Set(), counts: new Set(), every_ms: 0, timer: null, unsupported: false }
  self.journal = { add() {}, remove() {} }
  self.stats = { refused: {}, agent_errors: 0 }
  self.loginfo = () => {}
  self.agent = {
    async open_connection(route) {
      opened.push(route)
      return answers.shift()
    },
    async close_connection(slot) {
      closed.push(slot)
      return { closed: true }
    },
  }
  const deferred = []
  const connected = []
  const hmail = {
    mxlist: MXS.map((mx) => ({ ...mx })),
    mcluster_route: { binding: 'b', domain: 'example.test' },
    send_email_respond(code, seconds) {
      deferred.push(seconds)
    },
    try_deliver() {
      // the wrapped try_deliver: as Haraka's after the wrapper
      self.drop_unused(this)
      return self.open_for_mx(this, original)
    },
  }
  function original() {
    connected.push(this.mxlist[0].from_dns)
  }
  return { self, hmail, opened, closed, deferred, connected }
}

test('refused by mx1 cap: spills over to the sibling the agent names', async () => {
  const { self, hmail, opened, deferred, connected } = fake([
    { allowed: false, slot: null, reason: 'host full', spill_over: ['mx3.example.test'] },
    { allowed: true, slot: 's1', reason: null },
  ])
  await hmail.try_deliver()
  await new Promise(setImmediate)
  assert.deepEqual(opened.map((r) => r.host), ['mx1.example.test', 'mx3.example.test'])
  assert.deepEqual(opened[1].mx_hosts, undefined) // mx3 alone is left for this attempt
  assert.deepEqual(connected, ['mx3.example.test'])
  assert.deepEqual(deferred, [])
  assert.equal(hmail.mcluster_pending.slot, 's1')
  assert.equal(hmail.mcluster_host, 'mx3.example.test')
  assert.deepEqual(self.stats.refused, {}) // spilled over: the message was not refused
})

test('refused with no sibling named: the message waits cap_retry_seconds', async () => {
  const { self, hmail, deferred, connected } = fake([{ allowed: false, slot: null, reason: 'domain full', spill_over: [] }])
  await hmail.try_deliver()
  assert.deepEqual(deferred, ['1'])
  assert.deepEqual(connected, [])
  assert.equal(self.stats.refused.outbound_cap, 1)
})

test('a slot whose MX was never connected to is given back before the next MX', async () => {
  const { self, hmail, closed } = fake([
    { allowed: true, slot: 's1', reason: null },
    { allowed: true, slot: 's2', reason: null },
  ])
  await hmail.try_deliver() // connect to mx1 fails: Haraka tries the next MX
  hmail.mxlist.shift()
  await hmail.try_deliver()
  await new Promise(setImmediate)
  assert.deepEqual(closed, ['s1'])
  // the socket of the second is released: its slot goes back too
  const socket = { mcluster_state: hmail.mcluster_pending }
  hmail.mcluster_pending.sockets = 1
  self.socket_done(socket)
  self.socket_done(socket) // released twice: given back once
  await new Promise(setImmediate)
  assert.deepEqual(closed, ['s1', 's2'])
})

test('without the wrappers: the slot is opened at send_email and given back at the outcome', async () => {
  const { self, opened, closed } = fake([{ allowed: true, slot: 's1', reason: null }])
  self.haraka_require = () => ({ prototype: {} }) // a Haraka without try_deliver & co.
  self.logerror = () => {}
  self.mx_hooked = false
  self.watch_outbound()
  assert.equal(self.mx_hooked, false)
  self.cfg.outbound = { ...self.cfg.outbound, binding: 'b', report_outcomes: false }
  self.agent.outbound_message = async () => ({ allowed: true, retry_after_ms: 0 })
  const hmail = { todo: { domain: 'example.test', notes: {} } }
  let answered
  await self.outbound_send((...args) => {
    answered = args
  }, hmail)
  assert.deepEqual(answered, [])
  assert.deepEqual(opened, [{ binding: 'b', domain: 'example.test' }])
  self.outbound_delivered(() => {}, hmail, ['mx1.example.test', '192.0.2.1', '250 ok'])
  await new Promise(setImmediate)
  assert.deepEqual(closed, ['s1'])
})

test('OBTM is asked once per attempt, at the MX host given the slot', async () => {
  const { self, hmail, opened, closed, deferred, connected } = fake([
    { allowed: false, slot: null, reason: 'host full', spill_over: ['mx2.example.test'] },
    { allowed: true, slot: 's1', reason: null },
    { allowed: true, slot: 's2', reason: null },
  ])
  const asked = []
  const answers = [{ allowed: true }, { allowed: false, retry_after_ms: 1500 }]
  self.agent.outbound_message = async (route) => {
    asked.push(route)
    return answers.shift()
  }
  hmail.mcluster_obtm = true
  await hmail.try_deliver()
  await new Promise(setImmediate)
  // spilled over to mx2: its Host bucket is charged, not mx1's
  assert.deepEqual(asked.map((r) => r.host), ['mx2.example.test'])
  assert.deepEqual(opened.map((r) => r.host), ['mx1.example.test', 'mx2.example.test'])
  assert.deepEqual(connected, ['mx2.example.test'])
  // the next attempt: a slot at mx1, then refused by OBTM: the slot goes back and the
  // message waits the agent's retry time
  hmail.mxlist = MXS.map((mx) => ({ ...mx }))
  hmail.mcluster_obtm = true
  delete hmail.mcluster_pending
  await hmail.try_deliver()
  await new Promise(setImmediate)
  assert.deepEqual(asked.map((r) => r.host), ['mx2.example.test', 'mx1.example.test'])
  assert.equal(asked[1].mx_hosts.length, 3)
  assert.deepEqual(deferred, ['1.5'])
  assert.deepEqual(closed, ['s2'])
  assert.equal(self.stats.refused.obtm, 1)
  assert.deepEqual(connected, ['mx2.example.test'])
})
