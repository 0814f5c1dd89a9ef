'use strict'
const assert = require('node:assert/strict')
const { test } = require('node:test')

const { reply_code, reply_text } = require('../index')

test("the receiver's reply inside Haraka's words", () => {
  const err = 'Upstream error: 421 4.7.0 [TS03] Messages from 192.0.2.1 temporarily deferred'
  assert.equal(reply_code(err, 451), 421)
  assert.equal(reply_text(err), '4.7.0 [TS03] Messages from 192.0.2.1 temporarily deferred')
  assert.equal(reply_code('Tried all MXs', 451), 451)
  assert.equal(reply_text('Tried all MXs'), 'Tried all MXs')
  assert.equal(reply_code('250 2.0.0 OK', 250), 250)
})
