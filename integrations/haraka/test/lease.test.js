'use strict'
// The plugin's slot lease: opens name this process as owner, a lease is renewed while
// slots are held and stops when none are, and an agent older than owners (400 naming
// "owner") gets opens without one.
const assert = require('node:assert/strict')
const { test } = require('node:test')

const plugin = require('../index')
const { AgentRefused } = require('../lib/agent')

async function until(cond, what) {
  const deadline = Date.now() + 5000
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`${what}: not within 5 s`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

function fake(agent) {
  const logs = []
  const self = Object.create(plugin)
  self.agent = agent
  self.lease = { owner: 'haraka-h-1', held: new Set(), counts: new Set(), every_ms: 0, timer: null, unsupported: false }
  self.logwarn = (m) => logs.push(m)
  return { self, logs }
}

test('opens carry the owner; an agent that refuses it gets opens without', async () => {
  const bodies = []
  const agent = {
    async open_connection(route, owner = null) {
      bodies.push(owner)
      if (owner && bodies.length === 1) throw new AgentRefused('POST /v1/connections/open', 400, '{"error": "unknown field(s): owner"}')
      return { allowed: true, slot: 's', reason: null }
    },
  }
  const { self, logs } = fake(agent)
  assert.deepEqual(await self.open_slot({ binding: 'b', domain: 'd' }), { allowed: true, slot: 's', reason: null })
  assert.equal(self.lease.unsupported, true)
  await self.open_slot({ binding: 'b', domain: 'd' })
  assert.deepEqual(bodies, ['haraka-h-1', null, null])
  assert.equal(logs.length, 1)
})

test('renewed every lease TTL / 3 while slots are held, then stopped', async () => {
  let renewals = 0
  const agent = {
    async renew(owner) {
      assert.equal(owner, 'haraka-h-1')
      renewals++
      return { renewed: 1, lease_ttl: 0.15 }
    },
  }
  const { self } = fake(agent)
  self.hold_slot('s1', null) // no lease_ttl: an older agent, nothing to renew
  assert.equal(self.lease.timer, null)
  self.hold_slot('s1', 0.15)
  assert.equal(self.lease.every_ms, 50)
  await until(() => renewals >= 2, 'two renewals')
  self.lease.held.delete('s1')
  await until(() => self.lease.timer === null, 'the renewals stopped')
  const after = renewals
  await new Promise((resolve) => setTimeout(resolve, 80))
  assert.equal(renewals, after)
})
