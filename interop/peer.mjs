// A js-libp2p 3.x peer that Beam's Python interop tests drive over
// stdin/stdout with JSON lines (one object per line).
//
// Run as:  node --import ./polyfill.mjs peer.mjs [options]   (cwd: interop/)
// With --import ./loopback-public.mjs as well, @libp2p/autonat-v2 and
// @libp2p/dcutr treat loopback addresses as public (test-only; see there).
//
// Options:
//   --security noise|tls|both|noise,tls|tls,noise
//                       connection encrypters, in the order multistream-select
//                       offers them when dialling ("both" = noise,tls)
//   --seed HEX          32-byte hex seed for a deterministic Ed25519 identity
//   --ipv6              also listen on /ip6/::1/tcp/0
//   --listen MA         listen on MA instead of the defaults (repeatable,
//                       loopback only)
//   --no-connection-monitor
//                       disable libp2p's periodic ping of every connection
//   --dht               run @libp2p/kad-dht on /beam/kad/1.0.0 in server mode
//                       (see dht.mjs), with a validator and selector for
//                       Beam's "beam-name" records
//   --dht-client        the same in client mode (queries only; the protocol
//                       is not handled, so identify does not list it)
//   --name-seq-field N  the beam-name selector picks the record whose payload
//                       has the highest uvarint field N (default 5, the seq
//                       of Beam's names.proto; 0 = always the first record)
//   --relay-server      run @libp2p/circuit-relay-v2's relay (hop) service
//                       with its default limits (2 min, 128 KiB per circuit)
//   --relay-transport   add the circuit relay v2 transport: dial
//                       /p2p-circuit addresses, accept relayed connections
//                       (stop protocol), reserve with relayListen
//   --autonat           run @libp2p/autonat-v2 (client and server)
//   --dcutr             run @libp2p/dcutr (needs --relay-transport): on a
//                       relayed connection it upgrades to a direct one; the
//                       peers command then lists both
//   --gossipsub         run @libp2p/gossipsub (StrictSign) as the "pubsub"
//                       service: see gossip.mjs for its commands and events
//   --mdns              run @libp2p/mdns (peer discovery on the LAN, default
//                       options: query every 10 s, answer queries); emits
//                       {"event":"peer:discovery","peer":..,"addrs":[..]}
//                       for each mDNS response announcing a peer (lab LAN
//                       only: refused without BEAM_INTEROP_LAB=1)
//   --append-announce MA
//                       also announce MA (repeatable; NAT lab only, with
//                       BEAM_INTEROP_LAB=1): the router's mapping of our
//                       listen port, which js-libp2p would otherwise announce
//                       only once AutoNAT confirmed it
//
// stdout carries nothing but JSON lines:
//   {"event":"ready","peerId":..,"addrs":[..]} once listening, then replies
//   {"id":..,"ok":true,...} / {"id":..,"ok":false,"error":".."} to commands
//   and events: peer:connect, peer:disconnect, identify, and with a DHT
//   dht:peer:add / dht:peer:remove ({"event":..,"peerId":..}) as the routing
//   table changes.
// Diagnostics go to stderr.
//
// Commands ({"cmd":..,"id":..,"timeoutMs":..,...}): dial, ping, identify,
// echo, peers, hangup (see makeCommands), and with --dht/--dht-client
// (keys are "key" as UTF-8, "keyHex" as hex, or "peerId" for its multihash):
//   dhtBootstrap {addrs, minPeers=1, selfLookup=false}
//       -> {dialled, size, peers, found}   dial, wait for routing table size
//   dhtRoutingTable -> {mode, size, peers}
//   dhtClosest {key} -> {peers, infos:[{peerId, addrs}], queried, errors}
//   dhtGet {key} -> {value (hex), from, errors}
//   dhtGetLocal {key} -> {value}            this node's datastore only
//   dhtPut {key, value (hex)} -> {storedOn, errors}
//   dhtFindPeer {peerId, useCache=false} -> {peerId, addrs, from}
// NAT traversal (see makeNatCommands):
//   multiaddrs -> {addrs}                    what the node advertises now
//   relayListen {addr} -> {addrs}            reserve on the relay at addr
//       (needs --relay-transport); addrs: our /p2p-circuit addresses
//   relayReservations -> {reservations:[{peerId, addr, expiry}]}
//       (needs --relay-server)
//   autonatVerify {addr, verify} -> {result, success, failure}
//       (needs --autonat) ask the AutoNAT v2 server at addr to verify our
//       own address verify, with @libp2p/autonat-v2's own client code
// The echo protocol is handled on limited (relayed) connections too, and the
// echo command may use one.
//
// Safety: a connection gater refuses to dial anything that is not a loopback
// IP address (or a NAT lab one, with BEAM_INTEROP_LAB=1: see LAB), there is no bootstrap, no mDNS (unless --mdns, in a lab LAN), and the only DHT is Beam's
// (/beam/kad/1.0.0, never the IPFS one), so this peer never contacts
// anything but loopback.

import { createHash, createCipheriv } from 'node:crypto'
import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair, generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { tls } from '@libp2p/tls'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { autoNATv2 } from '@libp2p/autonat-v2'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { dcutr } from '@libp2p/dcutr'
import { mdns } from '@libp2p/mdns'
import { beamKadDHT, makeDhtCommands, watchRoutingTable } from './dht.mjs'
import { gossipService, makeGossipCommands, watchGossip } from './gossip.mjs'

export const ECHO_PROTOCOL = '/beam/echo/1.0.0'
const CHUNK = 64 * 1024
// A paused yamux stream can receive up to its window (16 MiB max) before the
// sender stops; keep the read buffer limit above that so backpressure never
// turns into a reset.
const MAX_READ_BUFFER = 32 * 1024 * 1024
const DEFAULT_TIMEOUT_MS = 60_000

// ---------------------------------------------------------------- output

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function warn (...args) {
  process.stderr.write(args.map(String).join(' ') + '\n')
}

// ---------------------------------------------------------------- options

function parseArgs (argv) {
  const opts = {
    security: ['noise'],
    seed: null,
    ipv6: false,
    listen: [],
    connectionMonitor: true,
    dht: null,
    nameSeqField: 5,
    relayServer: false,
    relayTransport: false,
    autonat: false,
    dcutr: false,
    mdns: false,
    gossipsub: false,
    appendAnnounce: []
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`)
      return argv[++i]
    }
    switch (arg) {
      case '--security': {
        const v = next()
        const list = v === 'both' ? ['noise', 'tls'] : v.split(',')
        if (list.length === 0 || list.some(s => s !== 'noise' && s !== 'tls') ||
            new Set(list).size !== list.length) {
          throw new Error(`bad --security ${v}`)
        }
        opts.security = list
        break
      }
      case '--seed': {
        const v = next()
        if (!/^[0-9a-fA-F]{64}$/.test(v)) throw new Error('--seed must be 64 hex digits')
        opts.seed = Buffer.from(v, 'hex')
        break
      }
      case '--ipv6':
        opts.ipv6 = true
        break
      case '--listen': {
        const ma = multiaddr(next())
        if (!isLoopback(ma)) throw new Error(`--listen ${ma} is not a loopback address`)
        opts.listen.push(ma.toString())
        break
      }
      case '--no-connection-monitor':
        opts.connectionMonitor = false
        break
      case '--dht':
      case '--dht-client': {
        const mode = arg === '--dht' ? 'server' : 'client'
        if (opts.dht != null && opts.dht !== mode) throw new Error('--dht and --dht-client exclude each other')
        opts.dht = mode
        break
      }
      case '--name-seq-field': {
        const v = Number(next())
        if (!Number.isSafeInteger(v) || v < 0 || v >= 2 ** 29) throw new Error('--name-seq-field must be a protobuf field number or 0')
        opts.nameSeqField = v === 0 ? null : v
        break
      }
      case '--relay-server':
        opts.relayServer = true
        break
      case '--relay-transport':
        opts.relayTransport = true
        break
      case '--autonat':
        opts.autonat = true
        break
      case '--dcutr':
        opts.dcutr = true
        break
      case '--mdns':
        // multicast goes to every interface of the machine: only inside the
        // lab's namespaces
        if (!LAB) throw new Error('--mdns: only in a lab LAN, with BEAM_INTEROP_LAB=1')
        opts.mdns = true
        break
      case '--gossipsub':
        opts.gossipsub = true
        break
      case '--append-announce': {
        const ma = multiaddr(next())
        if (!LAB || !isLoopback(ma)) throw new Error(`--append-announce ${ma}: only lab addresses, with BEAM_INTEROP_LAB=1`)
        opts.appendAnnounce.push(ma.toString())
        break
      }
      default:
        throw new Error(`unknown option ${arg}`)
    }
  }
  if (opts.dcutr && !opts.relayTransport) throw new Error('--dcutr needs --relay-transport')
  if (opts.listen.length === 0) {
    opts.listen.push('/ip4/127.0.0.1/tcp/0')
    if (opts.ipv6) opts.listen.push('/ip6/::1/tcp/0')
  }
  return opts
}

// ---------------------------------------------------------------- helpers

// BEAM_INTEROP_LAB=1: the peer runs inside the NAT lab's network namespaces
// (beam/testing/netlab.py), where nothing but the lab exists; then it may
// also listen on and dial the lab's internet (203.0.113.0/24) and home LANs
// (198.51.100.0/24), and --append-announce is allowed.
const LAB = process.env.BEAM_INTEROP_LAB === '1'

function isLoopback (ma) {
  const first = ma.getComponents()[0]
  if (first == null) return false
  if (LAB && first.name === 'ip4' &&
      (first.value.startsWith('203.0.113.') || first.value.startsWith('198.51.100.'))) return true
  if (first.name === 'ip4') return first.value.startsWith('127.')
  if (first.name === 'ip6') return first.value === '::1' || first.value === '0:0:0:0:0:0:0:1'
  return false
}

function withPeerId (ma, peerId) {
  const s = ma.toString()
  return s.includes('/p2p/') ? s : `${s}/p2p/${peerId}`
}

function parseAddr (value) {
  if (typeof value !== 'string') throw new Error('"addr" must be a multiaddr string')
  const ma = multiaddr(value)
  if (!isLoopback(ma)) throw new Error(`refusing to dial non-loopback address ${value}`)
  return ma
}

function chunks (data) {
  // a message event carries a Uint8Array or a Uint8ArrayList (iterable of
  // Uint8Array)
  return data instanceof Uint8Array ? [data] : data
}

/**
 * The deterministic echo payload: the AES-256-CTR keystream under key
 * sha256("beam-echo:" + seed) with an all-zero counter block, i.e. the
 * encryption of N zero bytes.  Fast (10 MiB in milliseconds) and easy to
 * reproduce from Python with the cryptography package.
 */
function payloadGenerator (seed) {
  const key = createHash('sha256').update(`beam-echo:${seed}`).digest()
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16))
  const zeros = Buffer.alloc(CHUNK)
  return (n) => cipher.update(n === CHUNK ? zeros : zeros.subarray(0, n))
}

function timeoutSignal (cmd) {
  const ms = Number.isFinite(cmd.timeoutMs) ? cmd.timeoutMs : DEFAULT_TIMEOUT_MS
  return AbortSignal.timeout(ms)
}

function describeConnection (conn) {
  return {
    peerId: conn.remotePeer.toString(),
    remoteAddr: conn.remoteAddr.toString(),
    direction: conn.direction,
    encryption: conn.encryption ?? null,
    multiplexer: conn.multiplexer ?? null,
    status: conn.status
  }
}

function describeIdentify (result) {
  return {
    peerId: result.peerId.toString(),
    protocols: [...result.protocols],
    observedAddr: result.observedAddr?.toString() ?? null,
    listenAddrs: result.listenAddrs.map(ma => ma.toString()),
    agentVersion: result.agentVersion ?? null,
    protocolVersion: result.protocolVersion ?? null
  }
}

// ---------------------------------------------------------------- echo

/**
 * Inbound handler for the echo protocol: write back every byte, pausing the
 * read side while our send buffer is full, and close our write side once the
 * remote has closed theirs and everything has been echoed.
 */
async function echoHandler (stream) {
  stream.maxReadBufferLength = MAX_READ_BUFFER
  await new Promise((resolve) => {
    const fail = (err) => {
      warn(`echo stream ${stream.id} failed: ${err?.stack ?? err}`)
      stream.abort(err instanceof Error ? err : new Error(String(err)))
      resolve()
    }
    stream.addEventListener('message', (evt) => {
      try {
        if (!stream.send(evt.data) && stream.readStatus === 'readable') {
          stream.pause()
          stream.onDrain().then(() => {
            if (stream.readStatus === 'paused') stream.resume()
          }, fail)
        }
      } catch (err) {
        fail(err)
      }
    })
    const finish = () => {
      if (stream.writeStatus === 'writable') {
        stream.close().then(resolve, fail)
      } else {
        resolve()
      }
    }
    stream.addEventListener('end', finish, { once: true })
    stream.addEventListener('close', () => resolve(), { once: true })
    if (stream.readableEnded) finish()
  })
}

/**
 * Outbound echo: stream N payload bytes in CHUNK-sized pieces (waiting for
 * 'drain' whenever send() says the buffer is full) while hashing whatever
 * comes back, half-close, then wait for the remote's half-close.
 */
async function echoClient (node, cmd) {
  const ma = parseAddr(cmd.addr)
  const total = cmd.bytes ?? 0
  if (!Number.isSafeInteger(total) || total < 0) throw new Error('"bytes" must be a non-negative integer')
  const signal = timeoutSignal(cmd)
  // runOnLimitedConnection: a relayed connection (circuit relay v2) is
  // limited, and js-libp2p opens streams on one only when told it may
  const stream = await node.dialProtocol(ma, cmd.protocol ?? ECHO_PROTOCOL, {
    signal, runOnLimitedConnection: true
  })
  stream.maxReadBufferLength = MAX_READ_BUFFER
  const started = Date.now()
  const hashIn = createHash('sha256')
  let received = 0
  const readDone = new Promise((resolve, reject) => {
    stream.addEventListener('message', (evt) => {
      for (const buf of chunks(evt.data)) {
        hashIn.update(buf)
        received += buf.byteLength
      }
    })
    stream.addEventListener('end', () => resolve(), { once: true })
    stream.addEventListener('close', (evt) => {
      if (evt.error != null) reject(evt.error)
      else resolve()
    }, { once: true })
    signal.addEventListener('abort', () => reject(signal.reason), { once: true })
  })
  readDone.catch(() => {}) // observed below; avoid an unhandled rejection meanwhile
  try {
    const next = payloadGenerator(cmd.seed ?? 0)
    const hashOut = createHash('sha256')
    let sent = 0
    while (sent < total) {
      const piece = next(Math.min(CHUNK, total - sent))
      hashOut.update(piece)
      sent += piece.byteLength
      if (!stream.send(piece)) {
        await stream.onDrain({ signal })
      }
    }
    await stream.close({ signal })
    await readDone
    return {
      sent,
      received,
      sha256Sent: hashOut.digest('hex'),
      sha256Received: hashIn.digest('hex'),
      ms: Date.now() - started
    }
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}

// ---------------------------------------------------------------- NAT traversal

function needService (node, name, option) {
  const service = node.services[name]
  if (service == null) throw new Error(`start the peer with ${option}`)
  return service
}

/**
 * Wait until the node advertises an address for which pick() is true, or
 * the signal aborts.
 */
async function waitForAddrs (node, pick, signal) {
  for (;;) {
    const found = node.getMultiaddrs().filter(pick)
    if (found.length > 0) return found
    await new Promise((resolve, reject) => {
      const done = () => {
        node.removeEventListener('self:peer:update', done)
        signal.removeEventListener('abort', aborted)
        resolve()
      }
      const aborted = () => {
        node.removeEventListener('self:peer:update', done)
        reject(signal.reason)
      }
      node.addEventListener('self:peer:update', done)
      signal.addEventListener('abort', aborted, { once: true })
      setTimeout(done, 100) // also poll: not every change is an event
    })
  }
}

function makeNatCommands (node) {
  return {
    async multiaddrs () {
      return { addrs: node.getMultiaddrs().map(ma => ma.toString()) }
    },

    async relayListen (cmd) {
      // Listening on <relay>/p2p-circuit is how js-libp2p reserves on one
      // particular relay; the listener then advertises the reservation's
      // addresses.
      const relay = parseAddr(cmd.addr)
      const relayId = relay.getComponents().findLast(c => c.name === 'p2p')?.value
      if (relayId == null) throw new Error('"addr" must end in /p2p/<relay>')
      const signal = timeoutSignal(cmd)
      await node.components.transportManager.listen([relay.encapsulate('/p2p-circuit')])
      const addrs = await waitForAddrs(node, ma => {
        const s = ma.toString()
        return s.includes(`/p2p/${relayId}/p2p-circuit`)
      }, signal)
      return { addrs: addrs.map(ma => ma.toString()) }
    },

    async relayReservations () {
      const relay = needService(node, 'relay', '--relay-server')
      const reservations = []
      for (const [peerId, r] of relay.reservations.entries()) {
        reservations.push({
          peerId: peerId.toString(),
          addr: r.addr.toString(),
          expiry: r.expiry.getTime(),
          limit: r.limit == null
            ? null
            : { duration: r.limit.duration ?? null, data: r.limit.data?.toString() ?? null }
        })
      }
      return { reservations }
    },

    async autonatVerify (cmd) {
      // @libp2p/autonat-v2's client asks only about addresses that are not
      // private (getUnverifiedMultiaddrs drops them), and all of loopback
      // is private, so on its own it never asks anything here.  Run its
      // real request code (askPeerToVerify: DialRequest, dial data, the
      // DialResponse, the dial-back handler checking our nonce) on one
      // address we name, by giving it the bookkeeping entry that filter
      // would have made.  These are internals of the exact version pinned
      // in package-lock.json.
      const service = needService(node, 'autonat', '--autonat')
      const client = service.client
      const server = parseAddr(cmd.addr)
      const own = multiaddr(cmd.verify)
      const signal = timeoutSignal(cmd)
      const conn = await node.dial(server, { signal })
      const verifying = new Set()
      const results = {
        multiaddr: own,
        success: 0,
        failure: 0,
        networkSegments: [],
        verifyingPeers: {
          has: (peer) => verifying.has(peer.toString()),
          add: (peer) => { verifying.add(peer.toString()) }
        },
        type: 'transport',
        lastVerified: undefined
      }
      // The service's own check on each new AutoNAT peer starts with
      // removeOutdatedMultiaddrResults, which would drop our entry (a
      // listen address is no "unverified" one to it) while the request is
      // out; hold that off meanwhile.
      const removeOutdated = client.removeOutdatedMultiaddrResults
      client.removeOutdatedMultiaddrResults = () => {}
      client.dialResults.set(own.toString(), results)
      const nonce = BigInt(Math.floor(Math.random() * Number.MAX_SAFE_INTEGER))
      client.nonces.add(nonce)
      try {
        await client.askPeerToVerify(conn, client.getNetworkSegment(conn.remoteAddr), nonce, { signal })
      } finally {
        client.nonces.delete(nonce)
        client.dialResults.delete(own.toString())
        client.removeOutdatedMultiaddrResults = removeOutdated
      }
      return {
        result: results.result ?? null,
        success: results.success,
        failure: results.failure
      }
    }
  }
}

// ---------------------------------------------------------------- mDNS

/**
 * @libp2p/mdns, reporting every peer it decodes from a response as a
 * peer:discovery event.  Not libp2p's own 'peer:discovery' event: that one
 * fires only the first time a peer enters the peer store, from any source
 * (an inbound connection first gives it with no addresses, and the mDNS
 * answer after it then fires nothing).
 */
function watchedMdns () {
  const factory = mdns()
  return (components) => {
    const discovery = factory(components)
    discovery.addEventListener('peer', (evt) => {
      emit({
        event: 'peer:discovery',
        peer: evt.detail.id.toString(),
        addrs: evt.detail.multiaddrs.map(ma => ma.toString())
      })
    })
    return discovery
  }
}

// ---------------------------------------------------------------- commands

function makeCommands (node) {
  const dhtCommands = makeDhtCommands(node, parseAddr)
  const withSignal = Object.fromEntries(Object.entries(dhtCommands).map(
    ([name, fn]) => [name, (cmd) => fn(cmd, timeoutSignal(cmd))]))
  return {
    ...withSignal,
    ...makeNatCommands(node),
    ...makeGossipCommands(node),

    async dial (cmd) {
      const conn = await node.dial(parseAddr(cmd.addr), { signal: timeoutSignal(cmd) })
      return describeConnection(conn)
    },

    async ping (cmd) {
      const ma = parseAddr(cmd.addr)
      const count = cmd.count ?? 1
      const rtts = []
      for (let i = 0; i < count; i++) {
        rtts.push(await node.services.ping.ping(ma, { signal: timeoutSignal(cmd) }))
      }
      return { rtts }
    },

    async identify (cmd) {
      const signal = timeoutSignal(cmd)
      const conn = await node.dial(parseAddr(cmd.addr), { signal })
      const result = await node.services.identify.identify(conn, { signal })
      return describeIdentify(result)
    },

    echo (cmd) {
      return echoClient(node, cmd)
    },

    async peers () {
      return { peers: node.getConnections().map(describeConnection) }
    },

    async hangup (cmd) {
      await node.hangUp(parseAddr(cmd.addr), { signal: timeoutSignal(cmd) })
      return {}
    }
  }
}

// ---------------------------------------------------------------- main

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  const privateKey = opts.seed != null
    ? await generateKeyPairFromSeed('Ed25519', opts.seed)
    : await generateKeyPair('Ed25519')
  const encrypters = { noise: () => noise(), tls: () => tls() }
  const services = { identify: identify(), ping: ping() }
  if (opts.dht != null) {
    services.dht = beamKadDHT({ clientMode: opts.dht === 'client', seqField: opts.nameSeqField })
  }
  if (opts.relayServer) services.relay = circuitRelayServer()
  if (opts.autonat) services.autonat = autoNATv2()
  if (opts.dcutr) services.dcutr = dcutr()
  if (opts.gossipsub) services.pubsub = gossipService()
  const transports = [tcp()]
  if (opts.relayTransport) transports.push(circuitRelayTransport())

  const node = await createLibp2p({
    privateKey,
    addresses: { listen: opts.listen, appendAnnounce: opts.appendAnnounce },
    transports,
    connectionEncrypters: opts.security.map(name => encrypters[name]()),
    streamMuxers: [yamux()],
    peerDiscovery: opts.mdns ? [watchedMdns()] : [],
    connectionGater: {
      // never dial anything but loopback, whatever a peer advertises
      denyDialMultiaddr: (ma) => !isLoopback(ma)
    },
    connectionMonitor: { enabled: opts.connectionMonitor },
    services
  })

  await node.handle(ECHO_PROTOCOL, echoHandler, { runOnLimitedConnection: true })

  const directionOf = (peerId) => node.getConnections(peerId)[0]?.direction ?? null
  node.addEventListener('peer:connect', (evt) => {
    emit({ event: 'peer:connect', peerId: evt.detail.toString(), direction: directionOf(evt.detail) })
  })
  node.addEventListener('peer:disconnect', (evt) => {
    emit({ event: 'peer:disconnect', peerId: evt.detail.toString() })
  })
  node.addEventListener('peer:identify', (evt) => {
    emit({
      event: 'identify',
      direction: evt.detail.connection?.direction ?? null,
      ...describeIdentify(evt.detail)
    })
  })

  if (node.services.dht != null) watchRoutingTable(node, emit)
  if (node.services.pubsub != null) watchGossip(node, emit)

  await node.start()
  const peerId = node.peerId.toString()
  emit({
    event: 'ready',
    peerId,
    addrs: node.getMultiaddrs().map(ma => withPeerId(ma, peerId)),
    security: opts.security,
    dht: opts.dht,
    // loopback-public.mjs was loaded (and @libp2p/autonat-v2 or
    // @libp2p/dcutr use its isPrivate)
    loopbackPublic: globalThis.beamLoopbackPublic === true
  })

  const commands = makeCommands(node)
  let stopping = null
  const stop = () => {
    stopping ??= node.stop()
    return stopping
  }

  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
  rl.on('line', (line) => {
    if (line.trim() === '') return
    let cmd
    try {
      cmd = JSON.parse(line)
    } catch (err) {
      emit({ id: null, ok: false, error: `bad JSON: ${err.message}` })
      return
    }
    const id = cmd.id ?? null
    if (cmd.cmd === 'stop') {
      stop().then(
        () => process.stdout.write(JSON.stringify({ id, ok: true }) + '\n', () => process.exit(0)),
        (err) => {
          emit({ id, ok: false, error: String(err?.message ?? err) })
          process.exit(1)
        })
      return
    }
    const fn = Object.hasOwn(commands, cmd.cmd) ? commands[cmd.cmd] : null
    if (fn == null) {
      emit({ id, ok: false, error: `unknown command ${JSON.stringify(cmd.cmd)}` })
      return
    }
    Promise.resolve().then(() => fn(cmd)).then(
      (result) => emit({ id, ok: true, ...result }),
      (err) => {
        warn(`command ${cmd.cmd} (id ${id}) failed: ${err?.stack ?? err}`)
        emit({ id, ok: false, error: `${err?.name ?? 'Error'}: ${err?.message ?? err}` })
      })
  })
  // The driving process went away: do not linger as an orphan.
  rl.on('close', () => {
    stop().finally(() => process.exit(0))
  })
}

process.on('unhandledRejection', (err) => {
  warn(`unhandled rejection: ${err?.stack ?? err}`)
})

main().catch((err) => {
  warn(`fatal: ${err?.stack ?? err}`)
  process.exit(1)
})
