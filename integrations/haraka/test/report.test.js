'use strict'
// What the plugin counts for the agent's /metrics (refusals by reason, answers without
// the agent by stage and fail mode), sent as running totals only when they changed; and
// inbound counts under the process's lease, or in the journal for an older agent.
const assert = require('node:assert/strict')
const { test } = require('node:test')

const plugin = require('../index')
const { AgentUnavailable } = require('../lib/agent')

function fake(fail, agent) {
  const self = Object.create(plugin)
  self.cfg = {
    main: { fail, retry_seconds: 60 },
    inbound: { object: 'inbound_cidr', ipv4_prefix: 24, ipv6_prefix: 64, max_connections: 0, audit: false },
  }
  self.stats = { refused: {}, unavailable: {}, agent_errors: 0 }
  self.reported = null
  self.reporting = false
  self.report_missing_until = 0
  self.lease = { owner: 'haraka-h-1', held: new Set(), counts: new Set(), every_ms: 0, timer: null, unsupported: false }
  self.agent = agent
  self.logwarn = () => {}
  self.logerror = () => {}
  self.logdebug = () => {}
  return self
}

test('answers without the agent are counted by stage and fail mode', () => {
  const closed = fake('closed', {})
  const err = new AgentUnavailable('POST /v1/events', 'ECONNREFUSED')
  assert.equal(closed.agent_failed(err, 'count connection', 'connect'), false)
  assert.equal(closed.agent_failed(err, 'uncount connection'), false) // not an answer
  assert.deepEqual(closed.stats.unavailable, { connect: { open: 0, closed: 1 } })
  assert.deepEqual(closed.stats.refused, { agent_unavailable: 1 })
  const open = fake('open', {})
  assert.equal(open.agent_failed(err, 'OBTM', 'send'), true)
  assert.deepEqual(open.stats.unavailable, { send: { open: 1, closed: 0 } })
  assert.deepEqual(open.stats.refused, {})
})

test('totals are reported when they changed, and not to an agent without the route', async () => {
  const bodies = []
  let known = true
  const self = fake('open', {
    async report(body) {
      bodies.push(JSON.parse(JSON.stringify(body)))
      return known
    },
  })
  self.report_totals() // nothing counted yet: nothing sent
  self.count_refusal('connection_cap')
  self.report_totals()
  await new Promise(setImmediate)
  self.report_totals() // unchanged
  await new Promise(setImmediate)
  assert.deepEqual(bodies, [{ reporter: 'haraka-h-1', client: 'haraka', refusals: { connection_cap: 1 }, unavailable: {} }])
  known = false
  self.count_refusal('connection_cap')
  self.report_totals()
  await new Promise(setImmediate)
  self.count_refusal('connection_cap')
  self.report_totals() // 404: left alone for a while
  assert.equal(bodies.length, 2)
})

test('an inbound count is leased; an agent without owned events gets the journal', async () => {
  const posted = []
  let lease_ttl = 1.5
  const journal = []
  const self = fake('open', {
    async events(events, owner) {
      posted.push([events[0].delta, owner])
      return owner && lease_ttl ? { accepted: 1, lease_ttl } : { accepted: 1 }
    },
  })
  self.journal = {
    add: (id, entry) => journal.push([id, entry.leased]),
    remove: () => {},
  }
  self.audit = () => {}
  const connection = (uuid) => ({ uuid, remote: { ip: '10.1.2.3' }, notes: {}, results: { add() {} } })
  const c1 = connection('c1')
  await self.inbound_connect(() => {}, c1)
  assert.deepEqual([...self.lease.counts], ['in:c1'])
  assert.notEqual(self.lease.timer, null)
  clearInterval(self.lease.timer)
  await self.inbound_uncount(c1)
  assert.deepEqual([...self.lease.counts], [])
  lease_ttl = 0 // an older agent: answers without lease_ttl
  await self.inbound_connect(() => {}, connection('c2'))
  await self.inbound_connect(() => {}, connection('c3'))
  assert.deepEqual(posted, [
    [1, 'haraka-h-1'],
    [-1, 'haraka-h-1'],
    [1, 'haraka-h-1'],
    [1, null],
  ])
  // c2 written down as leased, then again without: the journal gives it back at restart
  assert.deepEqual(journal, [
    ['in:c1', true],
    ['in:c2', true],
    ['in:c2', undefined],
    ['in:c3', false],
  ])
})
