// @libp2p/utils as @libp2p/autonat-v2 and @libp2p/dcutr see it under
// loopback-public.mjs: everything re-exported as it is, except that
// isPrivate and isPrivateIp call loopback addresses public.  Every other
// address gets the real answer.

import { isPrivate as realIsPrivate, isPrivateIp as realIsPrivateIp } from '@libp2p/utils'

export * from '@libp2p/utils'

// peer.mjs reports this in its ready event, so a test knows the hook is on.
globalThis.beamLoopbackPublic = true

function isLoopbackIp (ip) {
  if (typeof ip !== 'string') return false
  const lower = ip.toLowerCase()
  return lower.startsWith('127.') || lower === '::1' || lower === '0:0:0:0:0:0:0:1' ||
    lower.startsWith('::ffff:127.')
}

export function isPrivateIp (ip) {
  return isLoopbackIp(ip) ? false : realIsPrivateIp(ip)
}

export function isPrivate (ma) {
  // the same address the real one looks at: the first component
  const first = ma.getComponents()[0]
  if (first != null && (first.name === 'ip4' || first.name === 'ip6') && isLoopbackIp(first.value)) {
    return false
  }
  return realIsPrivate(ma)
}
