// @libp2p/utils as @libp2p/autonat-v2 and @libp2p/dcutr see it under
// loopback-public.mjs: everything re-exported as it is, except that
// isPrivate and isPrivateIp call loopback addresses public (and, in the NAT
// lab, the lab's internet: see LAB).  Every other
// address gets the real answer.

import { isPrivate as realIsPrivate, isPrivateIp as realIsPrivateIp } from '@libp2p/utils'

export * from '@libp2p/utils'

// peer.mjs reports this in its ready event, so a test knows the hook is on.
globalThis.beamLoopbackPublic = true

// With BEAM_INTEROP_LAB=1 (the NAT lab tests, beam/testing/netlab.py), the
// lab's "internet", 203.0.113.0/24 (TEST-NET-3, which Beam treats as
// public), counts as public too; the home LANs (198.51.100.0/24) stay
// private, as they are to Beam.
const LAB = process.env.BEAM_INTEROP_LAB === '1'

function isTestPublicIp (ip) {
  if (typeof ip !== 'string') return false
  const lower = ip.toLowerCase()
  if (LAB && (lower.startsWith('203.0.113.') || lower.startsWith('::ffff:203.0.113.'))) return true
  return lower.startsWith('127.') || lower === '::1' || lower === '0:0:0:0:0:0:0:1' ||
    lower.startsWith('::ffff:127.')
}

export function isPrivateIp (ip) {
  return isTestPublicIp(ip) ? false : realIsPrivateIp(ip)
}

export function isPrivate (ma) {
  // the same address the real one looks at: the first component
  const first = ma.getComponents()[0]
  if (first != null && (first.name === 'ip4' || first.name === 'ip6') && isTestPublicIp(first.value)) {
    return false
  }
  return realIsPrivate(ma)
}
