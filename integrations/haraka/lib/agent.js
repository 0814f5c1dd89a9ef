'use strict'
// The local mcluster agent's HTTP API, as the plugin uses it (docs/http-api.md and
// docs/throttles.md of mcluster). Every call has a deadline: a mail server must never wait
// on a slow agent longer than it is told to, so a late answer counts as "unreachable" and
// the caller applies its fail-open / fail-closed setting.

// How long a request whose answer matters even after its deadline (a slot the agent may
// grant) is still waited for in the background.
const LATE_LIMIT_MS = 60_000

class AgentUnavailable extends Error {
  constructor(what, cause) {
    super(`mcluster agent unavailable (${what}): ${cause}`)
    this.name = 'AgentUnavailable'
  }
}

class AgentRefused extends Error {
  // The agent answered with an error status (4xx other than the ones a caller tolerates):
  // a bug in the request or the config, never a reason to guess.
  constructor(what, status, body) {
    super(`mcluster agent refused ${what}: ${status} ${body}`)
    this.name = 'AgentRefused'
    this.status = status
  }
}

class Agent {
  // token: the agent's API token (its --api-token-file), sent as a bearer token
  constructor({ url = 'http://127.0.0.1:4802', timeout_ms = 250, token = null } = {}) {
    this.url = url.replace(/\/+$/, '')
    this.timeout_ms = timeout_ms
    this.token = token
  }

  // One request; answers {status, body}. Network errors, timeouts and 5xx throw
  // AgentUnavailable (the agent cannot decide); other statuses are returned as they are.
  // With on_late, the request is not abandoned at the deadline: the caller gets
  // AgentUnavailable then, and on_late(body) gets a 200 answer that comes later (up to
  // LATE_LIMIT_MS), so something the agent granted meanwhile can be given back.
  async request(method, path, body, on_late) {
    const what = `${method} ${path}`
    const headers = body === undefined ? {} : { 'content-type': 'application/json' }
    if (this.token) headers.authorization = `Bearer ${this.token}`
    const fetching = fetch(this.url + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(on_late ? LATE_LIMIT_MS : this.timeout_ms),
    }).then(async (resp) => ({ resp, text: await resp.text() }))
    let resp
    let text
    try {
      if (!on_late) {
        ;({ resp, text } = await fetching)
      } else {
        let timer
        const deadline = new Promise((resolve) => {
          timer = setTimeout(resolve, this.timeout_ms, null)
        })
        const first = await Promise.race([fetching, deadline])
        clearTimeout(timer)
        if (first === null) {
          fetching
            .then((late) => late.resp.status === 200 && on_late(JSON.parse(late.text)))
            .catch(() => {})
          throw new Error('The operation was aborted due to timeout')
        }
        ;({ resp, text } = first)
      }
    } catch (err) {
      throw new AgentUnavailable(what, err.cause?.code || err.cause?.message || err.message)
    }
    if (resp.status >= 500) throw new AgentUnavailable(what, `${resp.status} ${text}`)
    let parsed = null
    try {
      parsed = text ? JSON.parse(text) : null
    } catch {
      // aiohttp answers an unknown route with a plain-text 404
      parsed = { error: text.slice(0, 200) }
    }
    return { status: resp.status, body: parsed }
  }

  async ok(method, path, body, expected = [200], on_late = undefined) {
    const { status, body: answer } = await this.request(method, path, body, on_late)
    if (!expected.includes(status)) throw new AgentRefused(`${method} ${path}`, status, JSON.stringify(answer))
    return answer
  }

  // -- the calls --------------------------------------------------------------------------

  // {"status", "node", "private_name"}: the private name changes with every run of the agent
  health() {
    return this.ok('GET', '/healthz')
  }

  // With an owner, the agent takes the counts back if that owner stops renewing (see
  // renew); its answer then carries lease_ttl (an older agent's does not).
  events(events, owner = null) {
    return this.ok('POST', '/v1/events', owner ? { events, owner } : { events }, [202])
  }

  flush() {
    return this.ok('POST', '/v1/flush')
  }

  async count(object, key) {
    const q = new URLSearchParams({ key })
    const answer = await this.ok('GET', `/v1/objects/${encodeURIComponent(object)}/count?${q}`)
    return answer.count
  }

  // 201 created, 200 exists with the same rate; 409 (another rate) is an AgentRefused.
  create_throttle(name, rate) {
    return this.ok('POST', '/v1/throttles', { name, rate }, [200, 201])
  }

  acquire(limits) {
    return this.ok('POST', '/v1/throttles/acquire', { limits })
  }

  outbound_message(route) {
    return this.ok('POST', '/v1/outbound/message', route)
  }

  // A slot granted after the deadline (the caller has given up on it) is given back at once.
  // With an owner, the agent frees the slot if that owner stops renewing for its lease TTL
  // (the answer's lease_ttl, seconds): see renew.
  open_connection(route, owner = null) {
    const give_back = (late) => {
      if (late?.allowed && late.slot) this.close_connection(late.slot).catch(() => {})
    }
    const body = owner ? { ...route, owner } : route
    return this.ok('POST', '/v1/connections/open', body, [200], give_back)
  }

  // {"renewed": N (slots the owner holds), "lease_ttl"}
  renew(owner) {
    return this.ok('POST', '/v1/connections/renew', { owner })
  }

  close_connection(slot) {
    return this.ok('POST', '/v1/connections/close', { slot })
  }

  // POST /v1/metrics/events (audit metrics). Answers false when the agent's config has no
  // metrics stanza (404).
  async audit(events) {
    const { status, body } = await this.request('POST', '/v1/metrics/events', { events })
    if (status === 404) return false
    if (status >= 400) throw new AgentRefused('POST /v1/metrics/events', status, JSON.stringify(body))
    return true
  }

  // POST /v1/clients/report: the plugin's refusal totals for the agent's /metrics. Answers
  // false when the agent has no such route (404).
  async report(body) {
    const { status, body: answer } = await this.request('POST', '/v1/clients/report', body)
    if (status === 404) return false
    if (status >= 400) throw new AgentRefused('POST /v1/clients/report', status, JSON.stringify(answer))
    return true
  }

  // POST /v1/outbound/outcome (mcluster issue 17). Answers false when the agent has no
  // such route yet (404), so the caller can stop asking for a while.
  async outcome(report) {
    const { status, body } = await this.request('POST', '/v1/outbound/outcome', report)
    if (status === 404) return false
    if (status >= 400) throw new AgentRefused('POST /v1/outbound/outcome', status, JSON.stringify(body))
    return true
  }
}

module.exports = { Agent, AgentUnavailable, AgentRefused }
