// Test-only: `node --import ./loopback-public.mjs peer.mjs ...` makes
// @libp2p/autonat-v2 and @libp2p/dcutr treat loopback addresses
// (127.0.0.0/8, ::1) as public, so the NAT interop tests, which may use no
// address but loopback, can run AutoNAT dial-backs and DCUtR exchanges with
// the real library code.
//
// Both modules decide "private" with isPrivate / isPrivateIp imported from
// @libp2p/utils.  The resolve hook registered here (loopback-public-hooks.mjs)
// hands those two packages, and only them, libp2p-utils-public.mjs instead:
// @libp2p/utils re-exported unchanged except for those two predicates.  The
// rest of js-libp2p (its address manager, identify, the connection gater in
// peer.mjs that refuses every non-loopback dial) is untouched.

import { register } from 'node:module'

register('./loopback-public-hooks.mjs', import.meta.url)
