'use strict'
const assert = require('node:assert/strict')
const { test } = require('node:test')

const { block, client_ip } = require('../lib/cidr')

test('IPv4 blocks', () => {
  assert.equal(block('10.1.2.3', 24, 64), '10.1.2.0/24')
  assert.equal(block('10.1.2.3', 32, 64), '10.1.2.3/32')
  assert.equal(block('10.1.2.3', 0, 64), '0.0.0.0/0')
  assert.equal(block('255.255.255.255', 20, 64), '255.255.240.0/20')
})

test('an IPv4 client on a dual-stack socket is an IPv4 client', () => {
  assert.equal(client_ip('::ffff:127.0.0.1'), '127.0.0.1')
  assert.equal(block('::ffff:127.0.0.1', 24, 64), '127.0.0.0/24')
})

test('IPv6 blocks', () => {
  assert.equal(block('2001:db8:1:2:3::5', 24, 64), '2001:db8:1:2:0:0:0:0/64')
  assert.equal(block('::1', 24, 128), '0:0:0:0:0:0:0:1/128')
  assert.equal(block('2001:db8::ffff', 24, 120), '2001:db8:0:0:0:0:0:ff00/120')
  assert.equal(block('::ffff:1.2.3.4', 24, 96), '1.2.3.0/24') // mapped: IPv4
})

test('not an address', () => {
  assert.equal(block('unknown', 24, 64), null)
})
