'use strict'
// haraka-plugin-mcluster: cluster-wide limits for a Haraka farm, decided by the local
// mcluster agent (its HTTP API; every node of the farm runs one agent beside Haraka).
//
// Inbound: each connection is counted in the agent's `inbound_cidr` object while it is
// open, and refused with 421 when its client block already has `max_connections` open
// across the farm; MAIL FROM and RCPT TO spend named cluster-wide throttles.
// Outbound: before each delivery the message spends OBTM (`POST /v1/outbound/message`) and
// takes a connection slot (`POST /v1/connections/open`: OBTC and the connection caps); the
// slot is given back when the delivery attempt is over AND its SMTP socket is closed, so the
// farm never holds more connections than the caps allow. Outcomes are reported to
// `POST /v1/outbound/outcome`. When the agent cannot be reached in time, `fail = open`
// lets mail through and `fail = closed` defers it.

const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

const constants = require('haraka-constants')

const { Agent, AgentRefused, AgentUnavailable } = require('./lib/agent')
const { block, client_ip } = require('./lib/cidr')
const { Journal } = require('./lib/journal')

// How long an unknown route (404: an agent older than mcluster issue 17) is left alone
// before the plugin asks again.
const OUTCOME_RETRY_MS = 60_000
// A slot whose close the agent did not answer is asked again this many times (the agent
// itself retries a close it has accepted; this covers a request that never reached it).
const CLOSE_TRIES = 5
// How often the agent's run (its private name) is read again, and how long what a
// crashed Haraka held is tried to be given back while the agent does not answer.
const AGENT_RUN_EVERY_MS = 5_000
const RECOVER_EVERY_MS = 2_000
const RECOVER_TRIES = 150
// The agent takes at most this many MX hosts in a report (mcluster's MAX_MX_HOSTS).
const MAX_MX_HOSTS = 32
// How often the refusal totals are sent to the agent (when they changed).
const REPORT_EVERY_MS = 1_000

exports.register = function () {
  this.load_mcluster_ini()
  this.agent = new Agent({ url: this.cfg.main.url, timeout_ms: this.cfg.main.timeout_ms, token: this.cfg.main.token })
  this.throttles_made = new Map() // throttle name -> Promise of its creation
  this.outcome_missing_until = 0
  this.audit_missing_until = 0
  // running totals, reported to the agent's /metrics (report_totals)
  this.stats = { refused: {}, unavailable: {}, agent_errors: 0 }
  this.reported = null // the last report the agent took
  this.reporting = false
  this.report_missing_until = 0
  this.journal = new Journal(this.cfg.main.state_dir)
  // The agent frees the slots and takes back the inbound counts of an owner that stops
  // renewing (a Haraka killed with -9): this process's, renewed every lease TTL / 3 while
  // it holds any. counts_unsupported: an agent older than owned events.
  this.lease = {
    owner: `haraka-${os.hostname()}-${process.pid}`,
    held: new Set(),
    counts: new Set(),
    every_ms: 0,
    timer: null,
    unsupported: false,
    counts_unsupported: false,
  }
  this.agent_run = null
  this.follow_agent_run()
  this.recover(this.journal.orphans(), 1)
  setInterval(() => this.report_totals(), REPORT_EVERY_MS).unref()

  if (this.cfg.inbound.enabled) {
    this.register_hook('connect', 'inbound_connect')
    this.register_hook('disconnect', 'inbound_disconnect')
    if (Object.keys(this.cfg.inbound_messages).length) this.register_hook('mail', 'inbound_mail')
    if (Object.keys(this.cfg.inbound_recipients).length) this.register_hook('rcpt', 'inbound_rcpt')
    if (this.cfg.inbound.audit) this.register_hook('queue_ok', 'inbound_reception')
  }
  if (this.cfg.outbound.enabled) {
    this.register_hook('send_email', 'outbound_send')
    this.register_hook('delivered', 'outbound_delivered')
    this.register_hook('deferred', 'outbound_deferred')
    this.register_hook('bounce', 'outbound_bounce')
    this.mx_hooked = false
    this.watch_outbound()
  }
}

exports.load_mcluster_ini = function () {
  const cfg = this.config.get(
    'mcluster.ini',
    { booleans: ['+inbound.enabled', '-inbound.audit', '+outbound.enabled', '+outbound.report_outcomes'] },
    () => this.load_mcluster_ini(),
  )
  const main = cfg.main || {}
  const inbound = cfg.inbound || {}
  const outbound = cfg.outbound || {}
  const fail = String(main.fail || 'open').toLowerCase()
  if (fail !== 'open' && fail !== 'closed') {
    this.logerror(`mcluster.ini [main] fail = ${main.fail}: must be open or closed; using open`)
  }
  this.cfg = {
    main: {
      url: main.url || 'http://127.0.0.1:4802',
      timeout_ms: num(main.timeout_ms, 500),
      fail: fail === 'closed' ? 'closed' : 'open',
      retry_seconds: num(main.retry_seconds, 60),
      state_dir: main.state_dir || path.join(process.env.HARAKA || process.cwd(), 'mcluster-state'),
      token: this.read_token(main.token_file),
    },
    inbound: {
      enabled: inbound.enabled,
      object: inbound.object || 'inbound_cidr',
      ipv4_prefix: num(inbound.ipv4_prefix, 24),
      ipv6_prefix: num(inbound.ipv6_prefix, 64),
      max_connections: num(inbound.max_connections, 0),
      audit: inbound.audit,
    },
    inbound_messages: cfg.inbound_messages || {},
    inbound_recipients: cfg.inbound_recipients || {},
    outbound: {
      enabled: outbound.enabled,
      binding: outbound.binding || 'default',
      binding_group: outbound.binding_group || null,
      cap_retry_seconds: num(outbound.cap_retry_seconds, 1),
      report_outcomes: outbound.report_outcomes,
    },
  }
  if (this.agent) {
    this.agent.url = this.cfg.main.url.replace(/\/+$/, '')
    this.agent.timeout_ms = this.cfg.main.timeout_ms
    this.agent.token = this.cfg.main.token
  }
}

// The agent's API token: the file its --api-token-file names, stripped (as the agent reads it).
exports.read_token = function (file) {
  if (!file) return null
  try {
    return fs.readFileSync(file, 'utf8').trim() || null
  } catch (err) {
    this.logerror(`mcluster.ini [main] token_file = ${file}: ${err.message}`)
    return null
  }
}

function num(value, fallback) {
  const n = Number(value)
  return value === undefined || value === '' || !Number.isFinite(n) ? fallback : n
}

// Every refusal the plugin answers, by reason: connection_cap (421 over the per-block
// cap), message_rate / recipient_rate (450), obtm / outbound_cap (a deferral), and
// agent_unavailable (fail closed). Reported to the agent's /metrics.
exports.count_refusal = function (reason, connection) {
  this.stats.refused[reason] = (this.stats.refused[reason] || 0) + 1
  if (connection) this.audit(connection, 'rejection')
}

// The running totals go to the agent (POST /v1/clients/report): its /metrics has
// mcluster_client_refusals_total and mcluster_client_unavailable_total. Totals, so a
// report lost or sent twice costs nothing; what happened while the agent was away is
// reported once it answers again. An agent without the route (404) is left alone a minute.
exports.report_totals = function () {
  if (this.reporting || Date.now() < this.report_missing_until) return
  const { refused, unavailable } = this.stats
  const body = { reporter: this.lease.owner, client: 'haraka', refusals: refused, unavailable }
  const text = JSON.stringify(body)
  if (text === this.reported || (!Object.keys(refused).length && !Object.keys(unavailable).length)) return
  this.reporting = true
  this.agent
    .report(body)
    .then((known) => {
      if (known) this.reported = text
      else this.report_missing_until = Date.now() + OUTCOME_RETRY_MS
    })
    .catch((err) => this.logdebug(`refusal totals not reported: ${err.message}`))
    .finally(() => {
      this.reporting = false
    })
}

// Momentum's inbound audit metrics, cluster-wide ([inbound] audit = true): connect,
// reception and rejection per client address, read with `cluster audit` or
// GET /v1/metrics/inbound. Sent and not waited for; an agent whose config has no
// `Replicate "metrics"` answers 404, and is left alone for a minute.
exports.audit = function (connection, type) {
  if (!this.cfg.inbound.audit || Date.now() < this.audit_missing_until) return
  const ip = client_ip(connection.remote.ip)
  this.agent
    .audit([{ type, ip, count: 1 }])
    .then((known) => {
      if (known) return
      this.audit_missing_until = Date.now() + OUTCOME_RETRY_MS
      this.logwarn('the agent has no audit metrics (Replicate "metrics"); [inbound] audit paused')
    })
    .catch((err) => this.logwarn(`audit event not sent: ${err.message}`))
}

exports.inbound_reception = function (next, connection) {
  this.audit(connection, 'reception')
  next()
}

// The agent could not answer: log, count, and say whether to let the mail through. stage
// (connect, mail, rcpt, send) names an answer the plugin gives without a decision: counted
// by what it does (fail open or closed), a fail-closed one as a refusal too.
exports.agent_failed = function (err, what, stage = null) {
  this.stats.agent_errors++
  if (stage) {
    const { fail } = this.cfg.main
    const by_fail = (this.stats.unavailable[stage] ||= { open: 0, closed: 0 })
    by_fail[fail]++
    if (fail === 'closed') this.count_refusal('agent_unavailable')
  }
  if (!(err instanceof AgentUnavailable)) {
    this.logerror(`${what}: ${err.message}`)
  } else {
    this.logwarn(`${what}: ${err.message}; fail = ${this.cfg.main.fail}`)
  }
  return this.cfg.main.fail === 'open'
}

// -- what a crashed Haraka held ------------------------------------------------------------

// The agent's private name, read now and then: an inbound count is given back after a
// crash only to the same run of the agent (a restarted agent started from zero, and a -1
// there would count wrong). Slots need no such care: closing a slot the agent does not
// hold changes nothing.
exports.follow_agent_run = function () {
  const read = () =>
    this.agent
      .health()
      .then((h) => {
        if (h.private_name !== this.agent_run) this.loginfo(`agent run ${h.private_name}`)
        this.agent_run = h.private_name || null
      })
      .catch((err) => {
        // kept: a late answer under load is no sign that the agent restarted
        this.logdebug(`agent run not read: ${err.message}`)
      })
  read()
  setInterval(read, AGENT_RUN_EVERY_MS).unref()
}

exports.recover = async function (orphans, attempt) {
  if (!orphans.length) return
  const left = []
  for (const orphan of orphans) {
    let run
    try {
      run = (await this.agent.health()).private_name
    } catch (err) {
      left.push(orphan)
      continue
    }
    const pending = []
    let slots = 0
    let counts = 0
    let leased = 0
    for (const entry of orphan.entries) {
      try {
        if (entry.kind === 'in' && entry.leased) {
          // counted under the stopped process's lease: the agent takes it back (a -1 here
          // as well would take it out twice)
          leased++
        } else if (entry.kind === 'slot') {
          await this.agent.close_connection(entry.slot)
          slots++
        } else if (entry.kind === 'in' && entry.agent && entry.agent === run) {
          await this.agent.events([{ object: entry.object, key: entry.key, delta: -1 }])
          counts++
        }
      } catch (err) {
        if (!(err instanceof AgentUnavailable)) continue // refused: nothing to retry
        pending.push(entry)
      }
    }
    if (slots || counts || leased) {
      this.lognotice(
        `gave back ${slots} slot(s) and ${counts} inbound count(s) left by a stopped Haraka (${orphan.file}); ` +
          `${leased} inbound count(s) under its lease left to the agent`,
      )
    }
    if (pending.length) {
      left.push({ file: orphan.file, entries: pending })
    } else {
      fs.rmSync(orphan.file, { force: true })
    }
  }
  if (!left.length) return
  if (attempt >= RECOVER_TRIES) {
    this.logerror(`could not give back what a stopped Haraka held: ${left.map((o) => o.file).join(', ')}`)
    return
  }
  setTimeout(() => this.recover(left, attempt + 1), RECOVER_EVERY_MS).unref()
}

// -- inbound ---------------------------------------------------------------------------------

exports.inbound_connect = async function (next, connection) {
  const { inbound } = this.cfg
  const ip = client_ip(connection.remote.ip)
  const cidr = block(ip, inbound.ipv4_prefix, inbound.ipv6_prefix)
  if (!cidr) return next()
  // Counted under this process's lease: the agent takes the count back if Haraka dies
  // (kill -9) and stops renewing. Written down first either way: an agent older than
  // owned events answers without lease_ttl, and then the journal gives it back at restart.
  const leased = !this.lease.counts_unsupported
  const counted = { object: inbound.object, key: ip, id: `in:${connection.uuid}`, leased }
  const entry = { kind: 'in', agent: this.agent_run, object: counted.object, key: ip }
  this.journal.add(counted.id, { ...entry, leased })
  let answer
  try {
    answer = await this.agent.events([{ object: inbound.object, key: ip, delta: 1 }], leased ? this.lease.owner : null)
  } catch (err) {
    this.journal.remove(counted.id)
    if (this.agent_failed(err, 'count connection', 'connect')) return next()
    return next(constants.denysoftdisconnect, 'cluster limits unavailable; try again later')
  }
  if (leased && answer?.lease_ttl) {
    this.lease.counts.add(counted.id)
    this.keep_lease(answer.lease_ttl)
  } else if (leased) {
    this.logwarn('the agent takes no owner for events; inbound counts without a lease')
    this.lease.counts_unsupported = true
    counted.leased = false
    this.journal.add(counted.id, entry)
  }
  connection.notes.mcluster_counted = counted
  if (!inbound.max_connections) {
    this.audit(connection, 'connect')
    return next()
  }
  let open
  try {
    // Every count recorded before the flush is in Redis when it returns, this one too: of
    // connections that overlap in time, the one applied last sees all the others, so the
    // farm never holds more than max_connections (it may refuse a few too many).
    await this.agent.flush()
    open = await this.agent.count(inbound.object, cidr)
  } catch (err) {
    if (this.agent_failed(err, 'connection cap', 'connect')) return next()
    await this.inbound_uncount(connection)
    return next(constants.denysoftdisconnect, 'cluster limits unavailable; try again later')
  }
  connection.results.add(this, { open_in_block: `${open}/${inbound.max_connections}` })
  if (open <= inbound.max_connections) {
    this.audit(connection, 'connect')
    return next()
  }
  this.count_refusal('connection_cap', connection)
  await this.inbound_uncount(connection)
  next(
    constants.denysoftdisconnect,
    `too many connections from ${cidr} (cluster limit ${inbound.max_connections})`,
  )
}

exports.inbound_uncount = async function (connection) {
  const counted = connection.notes.mcluster_counted
  if (!counted) return
  delete connection.notes.mcluster_counted
  this.lease.counts.delete(counted.id)
  try {
    const owner = counted.leased ? this.lease.owner : null
    await this.agent.events([{ object: counted.object, key: counted.key, delta: -1 }], owner)
  } catch (err) {
    this.agent_failed(err, 'uncount connection')
  }
  this.journal.remove(counted.id) // tried once: a -1 that did reach the agent must not repeat
}

exports.inbound_disconnect = async function (next, connection) {
  await this.inbound_uncount(connection)
  next()
}

// Throttles are created on first use with the rate from mcluster.ini (a name defined with
// another rate elsewhere is a config error the agent names).
exports.ensure_throttle = function (name, rate) {
  let made = this.throttles_made.get(name)
  if (!made) {
    // one name per client block: forget them now and then (creating again is idempotent)
    if (this.throttles_made.size >= 10_000) this.throttles_made.clear()
    made = this.agent.create_throttle(name, rate)
    this.throttles_made.set(name, made)
    made.catch(() => this.throttles_made.delete(name))
  }
  return made
}

exports.inbound_limits = async function (section, connection) {
  const { inbound } = this.cfg
  const ip = client_ip(connection.remote.ip)
  const cidr = block(ip, inbound.ipv4_prefix, inbound.ipv6_prefix) || ip
  const limits = []
  for (const [template, rate] of Object.entries(section)) {
    const name = template.replaceAll('@block', cidr).replaceAll('@ip', ip)
    await this.ensure_throttle(name, String(rate))
    limits.push({ name, cost: 1 })
  }
  return limits
}

exports.inbound_rate = async function (next, connection, section, what) {
  let decision
  try {
    decision = await this.agent.acquire(await this.inbound_limits(section, connection))
  } catch (err) {
    if (this.agent_failed(err, what, STAGES[what])) return next()
    return next(constants.denysoft, 'cluster limits unavailable; try again later')
  }
  if (decision.degraded) {
    // the agent's own on_error answered, not a decision: the plugin's fail policy applies
    const err = new AgentUnavailable('POST /v1/throttles/acquire', 'degraded decision')
    if (this.agent_failed(err, what, STAGES[what])) return next()
    return next(constants.denysoft, 'cluster limits unavailable; try again later')
  }
  if (decision.allowed) return next()
  this.count_refusal(`${what}_rate`, connection)
  const secs = Math.ceil((decision.retry_after_ms || 1000) / 1000)
  next(constants.denysoft, `${what} rate limit reached; try again in ${secs} s`)
}

const STAGES = { message: 'mail', recipient: 'rcpt' }

exports.inbound_mail = function (next, connection) {
  return this.inbound_rate(next, connection, this.cfg.inbound_messages, 'message')
}

exports.inbound_rcpt = function (next, connection) {
  return this.inbound_rate(next, connection, this.cfg.inbound_recipients, 'recipient')
}

// -- outbound --------------------------------------------------------------------------------

function out_domain(hmail) {
  return hmail?.todo?.domain || hmail?.domain
}

exports.route = function (hmail) {
  const notes = hmail.todo?.notes || {}
  const route = { binding: notes.mcluster_binding || this.cfg.outbound.binding, domain: out_domain(hmail) }
  const group = notes.mcluster_binding_group || this.cfg.outbound.binding_group
  if (group) route.binding_group = group
  return route
}

// Haraka's send_email hook. With the wrappers (watch_outbound), OBTM and the connection
// slot are asked later, once Haraka has chosen the MX host and address (open_for_mx), so
// that the limits of Host and Provider scopes apply; here the attempt is only marked.
// Without them, both are asked here with the binding and domain only.
exports.outbound_send = async function (next, hmail) {
  delete hmail.mcluster_route // set again below for this attempt only
  const route = this.route(hmail)
  if (!route.domain) return next()
  if (this.mx_hooked) {
    hmail.mcluster_route = route
    hmail.mcluster_obtm = true // OBTM once per attempt, at the MX host given a slot
    return next()
  }
  const verdict = await this.obtm(route)
  if (typeof verdict === 'number') return this.delay(next, verdict)
  if (verdict === 'undecided') return next()
  let slot
  try {
    slot = await this.open_slot(route)
  } catch (err) {
    return this.agent_failed(err, 'connection slot', 'send') ? next() : this.delay(next, this.cfg.main.retry_seconds)
  }
  if (!slot.allowed) {
    this.count_refusal('outbound_cap')
    hmail.logdebug(this, `no slot for ${route.domain}: ${slot.reason}`)
    return this.delay(next, this.cap_retry(slot))
  }
  // Kept on the message object (not in its notes: Haraka shares one notes object between
  // the messages of a transaction's domains); given back at the outcome hook.
  hmail.mcluster_slot = this.took_slot(slot)
  next()
}

// OBTM for one delivery attempt: 'go', 'undecided' (the agent could not decide and fail =
// open: the attempt goes on without a slot either), or the seconds the message waits
// (refused: the agent's retry time, fractions kept; fail = closed: retry_seconds).
exports.obtm = async function (route) {
  const where = `${route.binding}::${route.domain}`
  const via = route.host ? ` (${route.host})` : ''
  let decision
  try {
    decision = await this.agent.outbound_message(route)
  } catch (err) {
    return this.agent_failed(err, 'OBTM', 'send') ? 'undecided' : this.cfg.main.retry_seconds
  }
  // one line per decision: operators (and the tests) can see the admitted rate
  if (decision.degraded) {
    // The agent could not decide in time and applied its own on_error (allow): not a
    // decision, so it gets the plugin's fail policy like an agent that does not answer
    // (fail open: the slot is still asked for).
    this.loginfo(`OBTM ${where} undecided (degraded: Redis did not answer in time)`)
    const err = new AgentUnavailable('POST /v1/outbound/message', 'degraded decision')
    return this.agent_failed(err, 'OBTM', 'send') ? 'go' : this.cfg.main.retry_seconds
  }
  if (!decision.allowed) {
    this.count_refusal('obtm')
    this.loginfo(`OBTM ${where} refused, retry in ${decision.retry_after_ms} ms${via}`)
    return Math.max(decision.retry_after_ms || 1000, 1) / 1000
  }
  this.loginfo(`OBTM ${where} allowed${via}`)
  return 'go'
}

// Haraka multiplies the delay by 1000; a string keeps its hook logger quiet (it logs an
// error for a number)
exports.delay = function (next, seconds) {
  next(constants.delay, String(seconds))
}

// Seconds a message waits after a connection cap refused it.
exports.cap_retry = function (slot) {
  const ms = slot.retry_after_ms || this.cfg.outbound.cap_retry_seconds * 1000
  return Math.max(ms, 1) / 1000
}

// A slot granted: written down, under this process's lease. Its state follows the message
// (and the socket it is used on) until it is given back.
exports.took_slot = function (slot) {
  this.journal.add(`slot:${slot.slot}`, { kind: 'slot', slot: slot.slot })
  this.hold_slot(slot.slot, slot.lease_ttl)
  return { slot: slot.slot, sockets: 0, closed: false }
}

// A slot under this process's lease; an agent older than leases (400 naming "owner")
// gets opens without one from then on (the journal still gives them back at a restart).
exports.open_slot = async function (route) {
  if (this.lease.unsupported) return this.agent.open_connection(route)
  try {
    return await this.agent.open_connection(route, this.lease.owner)
  } catch (err) {
    if (!(err instanceof AgentRefused) || err.status !== 400 || !/owner/.test(err.message)) throw err
    this.logwarn(`the agent takes no slot owner (${err.message}); slots without a lease`)
    this.lease.unsupported = true
    return this.agent.open_connection(route)
  }
}

// Renew the lease while this process holds slots or inbound counts: every lease TTL / 3
// (the agent's answer gives the TTL), so two renewals may be lost or late before the
// agent frees them.
exports.hold_slot = function (slot, lease_ttl) {
  if (!lease_ttl) return // no lease (an older agent)
  this.lease.held.add(slot)
  this.keep_lease(lease_ttl)
}

exports.keep_lease = function (lease_ttl) {
  const lease = this.lease
  lease.every_ms = Math.max(50, (lease_ttl * 1000) / 3)
  if (lease.timer) return
  lease.timer = setInterval(() => this.renew_lease(), lease.every_ms)
  lease.timer.unref()
}

exports.renew_lease = function () {
  const lease = this.lease
  if (!lease.held.size && !lease.counts?.size) {
    clearInterval(lease.timer)
    lease.timer = null
    return
  }
  this.agent
    .renew(lease.owner)
    .then((answer) => {
      if (answer.renewed < lease.held.size) {
        // the agent freed some (a renewal came too late, or the agent restarted)
        this.logwarn(`lease ${lease.owner}: the agent holds ${answer.renewed} of ${lease.held.size} slot(s)`)
      }
    })
    .catch((err) => this.logwarn(`lease ${lease.owner} not renewed: ${err.message}`))
}

// -- the MX host and its socket ------------------------------------------------------------

// The name of an MX as the agent's Host and Provider scopes know it: Haraka resolves an
// MX name to addresses and keeps the name in from_dns (for an implicit MX, an A record of
// the domain, from_dns is the domain).
function mx_name(mx) {
  const name = mx?.from_dns || mx?.exchange
  return name ? String(name).toLowerCase() : null
}

// The connection about to be made to hmail.mxlist[0]: the MX host, its address, and the
// domain's MX hosts in Haraka's order (the siblings a refusal may spill over to).
function mx_route(mxlist) {
  const mx = mxlist[0]
  const out = {}
  const host = mx_name(mx)
  if (host) out.host = host
  if (mx?.exchange && net.isIP(mx.exchange)) out.ip = mx.exchange
  const hosts = [...new Set(mxlist.map(mx_name).filter(Boolean))].slice(0, MAX_MX_HOSTS)
  if (hosts.length > 1) out.mx_hosts = hosts
  return out
}

exports.mx_name = mx_name
exports.mx_route = mx_route

// Haraka has no hook between choosing the MX (get_mx, then its own address lookup) and
// connecting, and none for outbound sockets. The plugin wraps four functions of Haraka's
// outbound code (tested on Haraka 3.3.4):
// - HMailItem.try_deliver (about to connect to mxlist[0]): the slot is opened there, with
//   the MX host, its address and the domain's MX hosts (open_for_mx);
// - HMailItem.try_deliver_host_on_socket (connected): the slot goes with the socket;
// - client_pool.release_client (the socket is done, after QUIT's answer): the slot is
//   given back. Haraka runs its delivered hook before it sends QUIT, so giving the slot
//   back there would let another node connect while this session is still open at the
//   receiver (the tests measure exactly this at their sinks);
// - HMailItem.split_to_new_recipients: a message split off for the recipients that failed
//   carries the MX host to its outcome report.
// When one cannot be found, the slot is opened at send_email and given back at the outcome.
exports.watch_outbound = function () {
  let HMailItem
  let client_pool
  try {
    HMailItem = this.haraka_require('outbound/hmail')
    client_pool = this.haraka_require('outbound/client_pool')
  } catch (err) {
    this.logerror(`cannot follow outbound connections (${err.message}); slots at send_email`)
    return
  }
  const proto = HMailItem.prototype
  const missing = ['try_deliver', 'try_deliver_host_on_socket', 'split_to_new_recipients', 'send_email_respond']
    .filter((name) => typeof proto[name] !== 'function')
  if (typeof client_pool.release_client !== 'function') missing.push('client_pool.release_client')
  if (missing.length) {
    this.logerror(`this Haraka has no ${missing.join(', ')}: slots opened at send_email without the MX host`)
    return
  }
  this.mx_hooked = true
  if (proto.try_deliver.mcluster) return // wrapped already (a reload): the wrappers call plugin.*
  const plugin = this
  const try_deliver = proto.try_deliver
  proto.try_deliver = function () {
    plugin.drop_unused(this) // a slot taken for an MX that Haraka did not connect to
    if (!this.mcluster_route || !this.mxlist?.length) return try_deliver.call(this)
    return plugin.open_for_mx(this, try_deliver)
  }
  proto.try_deliver.mcluster = true
  const on_socket = proto.try_deliver_host_on_socket
  proto.try_deliver_host_on_socket = function (mx, host, port, socket) {
    const state = this.mcluster_pending
    delete this.mcluster_pending
    const result = on_socket.call(this, mx, host, port, socket)
    if (state && !state.closed) {
      state.sockets++
      socket.mcluster_state = state
      // a socket that closes without release_client (which removes every listener) gives
      // its slot back too
      socket.once('close', () => plugin.socket_done(socket))
    }
    return result
  }
  const split = proto.split_to_new_recipients
  proto.split_to_new_recipients = function (recipients, response, cb) {
    const host = this.mcluster_host
    return split.call(this, recipients, response, (hmail) => {
      if (hmail !== this && host) hmail.mcluster_host = host
      return cb(hmail)
    })
  }
  const release = client_pool.release_client
  client_pool.release_client = function (socket, mx) {
    const result = release.call(this, socket, mx)
    plugin.socket_done(socket)
    return result
  }
}

// The slot for the connection Haraka is about to make to hmail.mxlist[0], then OBTM once
// per attempt, then let it connect. Refused by an MX host's cap, the agent names the
// siblings with room (spill_over): they are tried in Haraka's order, the others left out
// of this attempt. OBTM comes after the slot so that it is charged to the MX host the
// message goes to (after a spill-over, the sibling's Host bucket, not the first MX's); a
// message OBTM refuses gives its slot back. Any other refusal defers the message as at
// send_email.
exports.open_for_mx = async function (hmail, try_deliver) {
  const route = { ...hmail.mcluster_route, ...mx_route(hmail.mxlist) }
  let slot
  try {
    slot = await this.open_slot(route)
  } catch (err) {
    if (this.agent_failed(err, 'connection slot', 'send')) return try_deliver.call(hmail)
    return this.defer(hmail, this.cfg.main.retry_seconds)
  }
  if (!slot.allowed) {
    const spill = new Set(slot.spill_over || [])
    const siblings = hmail.mxlist.filter((mx) => spill.has(mx_name(mx)))
    if (siblings.length) {
      // not a refusal of the message (the agent counts the refused open itself)
      this.loginfo(`no slot for ${route.host} (${slot.reason}); spilling over to ${mx_name(siblings[0])}`)
      hmail.mxlist = siblings
      return hmail.try_deliver()
    }
    this.count_refusal('outbound_cap')
    this.loginfo(`no slot for ${route.domain} via ${route.host || '?'}: ${slot.reason}`)
    return this.defer(hmail, this.cap_retry(slot))
  }
  hmail.mcluster_pending = this.took_slot(slot)
  hmail.mcluster_host = route.host
  if (hmail.mcluster_obtm) {
    // OBTM once per attempt, with this MX host and the MX hosts left (the Host and
    // Provider buckets); the next MX of the same attempt (an address that refused) does
    // not spend it again. Undecided (fail open): the attempt goes on with its slot.
    delete hmail.mcluster_obtm
    const verdict = await this.obtm(route)
    if (typeof verdict === 'number') {
      this.drop_unused(hmail)
      return this.defer(hmail, verdict)
    }
  }
  return try_deliver.call(hmail)
}

// Put the message back in the queue for `seconds` from inside Haraka's delivery (after
// send_email): what Haraka does for a send_email hook's DELAY.
exports.defer = function (hmail, seconds) {
  hmail.send_email_respond(constants.delay, String(seconds))
}

// A slot taken at try_deliver whose connection was never made (no socket: the address
// refused, or Haraka skipped the MX) is given back before the next MX is tried.
exports.drop_unused = function (hmail) {
  const state = hmail.mcluster_pending
  if (!state) return
  delete hmail.mcluster_pending
  this.give_back(state)
}

exports.socket_done = function (socket) {
  const state = socket?.mcluster_state
  if (!state) return
  delete socket.mcluster_state // released once per socket, whatever calls it again
  state.sockets--
  if (state.sockets <= 0) this.give_back(state)
}

exports.give_back = function (state) {
  if (state.closed) return
  state.closed = true
  this.lease.held.delete(state.slot) // its close renews the lease one last time
  this.close_slot(state.slot, 1)
}

exports.close_slot = function (slot, attempt) {
  this.agent
    .close_connection(slot)
    .then(() => this.journal.remove(`slot:${slot}`))
    .catch((err) => {
      if (attempt >= CLOSE_TRIES || !(err instanceof AgentUnavailable)) {
        // left in the journal: the next start of Haraka tries again
        this.logerror(`slot ${slot} not given back: ${err.message}`)
        return
      }
      setTimeout(() => this.close_slot(slot, attempt + 1), 200 * 2 ** attempt).unref()
    })
}

// The end of an attempt: a slot opened at send_email (no wrappers) goes back, and the
// outcome is reported.
exports.attempt_over = function (hmail, outcome) {
  if (hmail.mcluster_slot) this.give_back(hmail.mcluster_slot)
  delete hmail.mcluster_slot
  const host = outcome.host || hmail.mcluster_host
  delete hmail.mcluster_host
  if (!this.cfg.outbound.report_outcomes || Date.now() < this.outcome_missing_until) return
  const route = this.route(hmail)
  if (!route.domain) return
  const report = { binding: route.binding, domain: route.domain, code: outcome.code, text: outcome.text }
  if (host) report.host = host
  this.agent
    .outcome(report)
    .then((known) => {
      if (!known) this.outcome_missing_until = Date.now() + OUTCOME_RETRY_MS
    })
    .catch((err) => this.logdebug(`outcome not reported: ${err.message}`))
}

// Haraka's texts carry the receiver's reply inside its own words ("Upstream error: 421
// 4.7.0 [TS03] ..."): the code, and the reply after it (enhanced status and text).
function reply_code(text, fallback) {
  const m = /\b([245]\d\d)\b/.exec(String(text || ''))
  return m ? Number(m[1]) : fallback
}

exports.reply_code = reply_code
exports.reply_text = reply_text

function reply_text(text) {
  const s = String(text || '')
  const m = /\b[245]\d\d\b[ -]?/.exec(s)
  return (m ? s.slice(m.index + m[0].length) || s : s).slice(0, 1000)
}

exports.outbound_delivered = function (next, hmail, params) {
  const [host, , response] = params || []
  const text = Array.isArray(response) ? response.join(' ') : response
  this.attempt_over(hmail, { host, code: reply_code(text, 250), text: reply_text(text) })
  next()
}

exports.outbound_deferred = function (next, hmail, params) {
  const text = params?.err?.message || params?.err
  this.attempt_over(hmail, { code: reply_code(text, 451), text: reply_text(text) })
  next()
}

exports.outbound_bounce = function (next, hmail, err) {
  const text = err?.message || err
  this.attempt_over(hmail, { code: reply_code(text, 550), text: reply_text(text) })
  next()
}
