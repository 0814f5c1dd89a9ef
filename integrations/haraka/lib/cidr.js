'use strict'
// The block of bits that an inbound cap or rate counts a client in: 10.1.2.3 at /24 is
// 10.1.2.0/24. The agent masks a prefix itself for counts; the plugin needs the block's
// canonical name for throttle names and for the 421 text.

const net = require('node:net')

// '::ffff:10.1.2.3' (a v4 client on a dual-stack socket) is the IPv4 client 10.1.2.3.
function client_ip(ip) {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip || '')
  return m ? m[1] : ip
}

function expand6(ip) {
  let [head, tail] = ip.includes('::') ? ip.split('::') : [ip, null]
  const h = head ? head.split(':') : []
  let t = tail ? tail.split(':') : []
  // an embedded dotted quad at the end is two groups
  const last = t.length ? t[t.length - 1] : h[h.length - 1]
  if (last && last.includes('.')) {
    const q = last.split('.').map(Number)
    const groups = [((q[0] << 8) | q[1]).toString(16), ((q[2] << 8) | q[3]).toString(16)]
    if (t.length) t = [...t.slice(0, -1), ...groups]
    else h.splice(h.length - 1, 1, ...groups)
  }
  const fill = tail === null ? [] : new Array(8 - h.length - t.length).fill('0')
  return [...h, ...fill, ...t].map((g) => parseInt(g, 16))
}

function block(ip, v4_prefix, v6_prefix) {
  ip = client_ip(ip)
  if (net.isIPv4(ip)) {
    const n = ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0)
    const size = 2 ** (32 - v4_prefix)
    const base = n - (n % size)
    const octets = [24, 16, 8, 0].map((s) => Math.floor(base / 2 ** s) % 256)
    return `${octets.join('.')}/${v4_prefix}`
  }
  if (net.isIPv6(ip)) {
    const groups = expand6(ip)
    const out = groups.map((g, i) => {
      const bits = Math.max(0, Math.min(16, v6_prefix - i * 16))
      return bits === 0 ? 0 : g & (0xffff << (16 - bits)) & 0xffff
    })
    return `${out.map((g) => g.toString(16)).join(':')}/${v6_prefix}`
  }
  return null
}

module.exports = { block, client_ip }
