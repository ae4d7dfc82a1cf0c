// The kad-dht part of the interop peer: @libp2p/kad-dht speaking Beam's
// DHT protocol (/beam/kad/1.0.0) with a record validator and selector for
// Beam's "beam-name" namespace, plus the JSON-lines commands that drive it.
//
// Beam's name records are libp2p signed envelopes (RFC 0002) under the DHT
// key "/beam-name/<name>", with domain "beam-name-record" and payload type
// "/beam/name-record/1".  The validator here checks what it can without
// knowing the payload's own schema: the key's name syntax, the envelope's
// structure and payload type, and the envelope signature.  Expiry, owner
// and the record's name field are Beam's to check (its validator is the
// authority); this one only has to keep junk out of the js node.
//
// The selector picks the record whose payload protobuf has the highest
// uvarint in field N (--name-seq-field N; 5 by default, the seq field of
// beam/proto/names.proto), ties and unparsable records going to the first.
// That is simpler than Beam's own choice (the owner most holders agree on,
// then the highest seq): between records of one owner both agree, and the
// js side is only a client of Beam's names.  With --name-seq-field 0 it
// always picks the first record (index 0).

import { publicKeyFromProtobuf } from '@libp2p/crypto/keys'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'

export const DHT_PROTOCOL = '/beam/kad/1.0.0'
export const NAME_NAMESPACE = 'beam-name'
export const NAME_KEY_PREFIX = `/${NAME_NAMESPACE}/`
export const NAME_DOMAIN = 'beam-name-record'
export const NAME_PAYLOAD_TYPE = '/beam/name-record/1'
export const MAX_NAME_RECORD = 16 * 1024

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

// ---------------------------------------------------------------- protobuf

function readVarint (buf, pos) {
  let value = 0n
  let shift = 0n
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new Error('truncated varint')
    const b = buf[pos++]
    value |= BigInt(b & 0x7f) << shift
    if ((b & 0x80) === 0) return [value, pos]
    shift += 7n
  }
  throw new Error('varint longer than 10 bytes')
}

/**
 * Split a protobuf message into its fields: a Map from field number to a
 * list of values (Uint8Array for length-delimited fields, BigInt for
 * varints).  Fixed-width fields are skipped; groups are refused.
 */
export function parseFields (buf) {
  const fields = new Map()
  let pos = 0
  while (pos < buf.length) {
    let tag
    [tag, pos] = readVarint(buf, pos)
    const number = Number(tag >> 3n)
    const wireType = Number(tag & 7n)
    if (number === 0) throw new Error('field number 0')
    let value
    if (wireType === 0) {
      [value, pos] = readVarint(buf, pos)
    } else if (wireType === 2) {
      let length
      [length, pos] = readVarint(buf, pos)
      if (length > BigInt(buf.length - pos)) throw new Error('truncated field')
      value = buf.subarray(pos, pos + Number(length))
      pos += Number(length)
    } else if (wireType === 1 || wireType === 5) {
      pos += wireType === 1 ? 8 : 4
      if (pos > buf.length) throw new Error('truncated fixed field')
      continue
    } else {
      throw new Error(`unsupported wire type ${wireType}`)
    }
    if (!fields.has(number)) fields.set(number, [])
    fields.get(number).push(value)
  }
  return fields
}

function uvarint (n) {
  const out = []
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80)
    n >>>= 7
  }
  out.push(n)
  return out
}

function concat (parts) {
  const total = parts.reduce((n, p) => n + p.length, 0)
  const out = new Uint8Array(total)
  let pos = 0
  for (const p of parts) {
    out.set(p, pos)
    pos += p.length
  }
  return out
}

/**
 * The bytes a signed envelope's signature covers (RFC 0002): each of
 * domain, payload type and payload prefixed with its uvarint length.
 */
export function envelopeSignedData (domain, payloadType, payload) {
  const d = encoder.encode(domain)
  return concat([
    Uint8Array.from(uvarint(d.length)), d,
    Uint8Array.from(uvarint(payloadType.length)), payloadType,
    Uint8Array.from(uvarint(payload.length)), payload
  ])
}

function lastBytes (fields, number, what) {
  const values = fields.get(number)
  const v = values?.[values.length - 1]
  if (!(v instanceof Uint8Array) || v.length === 0) throw new Error(`envelope has no ${what}`)
  return v
}

/**
 * Parse a signed envelope and check its payload type and signature.
 *
 * @returns {{ publicKey, payloadType: Uint8Array, payload: Uint8Array }}
 */
export async function openNameEnvelope (value) {
  const fields = parseFields(value)
  const publicKeyBytes = lastBytes(fields, 1, 'public key')
  const payloadType = lastBytes(fields, 2, 'payload type')
  const payload = lastBytes(fields, 3, 'payload')
  const signature = lastBytes(fields, 5, 'signature')
  if (decoder.decode(payloadType) !== NAME_PAYLOAD_TYPE) {
    throw new Error(`payload type is not ${NAME_PAYLOAD_TYPE}`)
  }
  const publicKey = publicKeyFromProtobuf(publicKeyBytes)
  const ok = await publicKey.verify(envelopeSignedData(NAME_DOMAIN, payloadType, payload), signature)
  if (ok !== true) throw new Error('bad envelope signature')
  return { publicKey, payloadType, payload }
}

// ---------------------------------------------------------------- validator

/**
 * Check a name's syntax: lower-case DNS-style labels of [a-z0-9-], 1-63
 * characters each, separated by dots, at most 253 characters.
 */
export function checkName (name) {
  if (name.length === 0 || name.length > 253) throw new Error('bad name length')
  for (const label of name.split('.')) {
    if (!/^[a-z0-9-]{1,63}$/.test(label)) throw new Error(`bad name label ${JSON.stringify(label)}`)
  }
}

/**
 * The kad-dht ValidateFn for "/beam-name/<name>" keys.  Throws (so the
 * record is dropped) unless the key is well formed and the value is a
 * correctly signed name-record envelope of at most 16 KiB.
 */
export async function validateBeamName (key, value) {
  let keyString
  try {
    keyString = decoder.decode(key)
  } catch {
    throw new Error('key is not UTF-8')
  }
  if (!keyString.startsWith(NAME_KEY_PREFIX)) throw new Error(`key is not under ${NAME_KEY_PREFIX}`)
  checkName(keyString.slice(NAME_KEY_PREFIX.length))
  if (value.length > MAX_NAME_RECORD) throw new Error('record too large')
  await openNameEnvelope(value)
}

/**
 * Make the kad-dht SelectFn for "/beam-name/" keys.
 *
 * @param seqField - the payload's uvarint seq field number, or null to
 *   always choose the first record
 */
export function makeBeamNameSelector (seqField) {
  return (key, records) => {
    if (seqField == null) return 0
    let best = 0
    let bestSeq = -1n
    records.forEach((record, i) => {
      let seq = -1n
      try {
        const payload = lastBytes(parseFields(record), 3, 'payload')
        const values = parseFields(payload).get(seqField)
        const v = values?.[values.length - 1]
        if (typeof v === 'bigint') seq = v
      } catch {
        seq = -1n
      }
      if (seq > bestSeq) {
        best = i
        bestSeq = seq
      }
    })
    return best
  }
}

// ---------------------------------------------------------------- service

/**
 * The kad-dht service factory: Beam's protocol only, loopback addresses
 * kept (the default mapper drops private addresses, so nothing on
 * 127.0.0.1 would ever enter the routing table), queries allowed before
 * the first peer is known (so a command fails fast instead of waiting for
 * the initial self-query).
 */
export function beamKadDHT ({ clientMode, seqField }) {
  return kadDHT({
    protocol: DHT_PROTOCOL,
    clientMode,
    peerInfoMapper: passthroughMapper,
    validators: { [NAME_NAMESPACE]: validateBeamName },
    selectors: { [NAME_NAMESPACE]: makeBeamNameSelector(seqField) },
    allowQueryWithZeroPeers: true,
    logPrefix: 'libp2p:beam-kad',
    datastorePrefix: '/beam-kad',
    metricsPrefix: 'libp2p_beam_kad'
  })
}

// ---------------------------------------------------------------- commands

function keyOf (cmd) {
  if (typeof cmd.keyHex === 'string') {
    if (!/^([0-9a-fA-F]{2})*$/.test(cmd.keyHex)) throw new Error('"keyHex" must be hex')
    return Uint8Array.from(Buffer.from(cmd.keyHex, 'hex'))
  }
  if (typeof cmd.key === 'string') return encoder.encode(cmd.key)
  if (typeof cmd.peerId === 'string') return peerIdFromString(cmd.peerId).toMultihash().bytes
  throw new Error('give "key" (UTF-8), "keyHex" or "peerId"')
}

function hexOf (bytes) {
  return Buffer.from(bytes).toString('hex')
}

function describeError (event) {
  return { from: event.from?.toString() ?? null, error: String(event.error?.message ?? event.error) }
}

function routingTablePeers (dht) {
  const kb = dht.routingTable.kb
  return kb == null ? [] : [...kb.toIterable()].map(p => p.peerId.toString())
}

function sleep (ms, signal) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms)
    signal.addEventListener('abort', () => {
      clearTimeout(t)
      reject(signal.reason)
    }, { once: true })
  })
}

/**
 * Forward routing-table changes as events so tests can wait for them.
 */
export function watchRoutingTable (node, emit) {
  const rt = node.services.dht.routingTable
  rt.addEventListener('peer:add', (evt) => emit({ event: 'dht:peer:add', peerId: evt.detail.toString() }))
  rt.addEventListener('peer:remove', (evt) => emit({ event: 'dht:peer:remove', peerId: evt.detail.toString() }))
}

/**
 * The DHT commands; each takes the command object and an AbortSignal.
 */
export function makeDhtCommands (node, parseAddr) {
  const dht = () => {
    const service = node.services.dht
    if (service == null) throw new Error('the DHT is not enabled (start with --dht or --dht-client)')
    return service
  }

  return {
    async dhtBootstrap (cmd, signal) {
      const d = dht()
      const addrs = cmd.addrs ?? []
      if (!Array.isArray(addrs)) throw new Error('"addrs" must be a list of multiaddrs')
      const minPeers = cmd.minPeers ?? 1
      const dialled = []
      for (const addr of addrs) {
        const conn = await node.dial(parseAddr(addr), { signal })
        dialled.push(conn.remotePeer.toString())
      }
      // Peers enter the routing table once identify shows they serve the
      // DHT protocol and they answer a ping.
      while (d.routingTable.size < minPeers) await sleep(25, signal)
      let found = null
      if (cmd.selfLookup === true) {
        found = 0
        for await (const event of d.getClosestPeers(node.peerId.toMultihash().bytes, { signal })) {
          if (event.name === 'FINAL_PEER') found++
        }
      }
      return { dialled, size: d.routingTable.size, peers: routingTablePeers(d), found }
    },

    async dhtRoutingTable () {
      const d = dht()
      return { mode: d.getMode(), size: d.routingTable.size, peers: routingTablePeers(d) }
    },

    async dhtClosest (cmd, signal) {
      const peers = []
      const infos = []
      const errors = []
      const queried = new Set()
      for await (const event of dht().getClosestPeers(keyOf(cmd), { signal })) {
        if (event.name === 'FINAL_PEER') {
          peers.push(event.peer.id.toString())
          infos.push({ peerId: event.peer.id.toString(), addrs: event.peer.multiaddrs.map(String) })
        } else if (event.name === 'PEER_RESPONSE') {
          queried.add(event.from.toString())
        } else if (event.name === 'QUERY_ERROR') {
          errors.push(describeError(event))
        }
      }
      return { peers, infos, queried: [...queried], errors }
    },

    async dhtGet (cmd, signal) {
      const errors = []
      let found = null
      for await (const event of dht().get(keyOf(cmd), { signal })) {
        if (event.name === 'VALUE') {
          found = { value: hexOf(event.value), from: event.from.toString() }
        } else if (event.name === 'QUERY_ERROR') {
          errors.push(describeError(event))
        }
      }
      if (found == null) {
        const err = new Error(`no value found${errors.length > 0 ? ': ' + JSON.stringify(errors) : ''}`)
        err.name = 'NotFoundError'
        throw err
      }
      return { ...found, errors }
    },

    async dhtGetLocal (cmd, signal) {
      const record = await dht().contentFetching.getLocal(keyOf(cmd), { signal })
      return { value: hexOf(record.value) }
    },

    async dhtPut (cmd, signal) {
      if (typeof cmd.value !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(cmd.value)) {
        throw new Error('"value" must be hex')
      }
      const storedOn = []
      const errors = []
      for await (const event of dht().put(keyOf(cmd), Uint8Array.from(Buffer.from(cmd.value, 'hex')), { signal })) {
        if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE') {
          storedOn.push(event.from.toString())
        } else if (event.name === 'QUERY_ERROR') {
          errors.push(describeError(event))
        }
      }
      // a peer that answered with a different record is reported in errors
      // as well ("Value not put correctly"); it did not store ours
      const refused = new Set(errors.filter(e => /not put correctly/.test(e.error)).map(e => e.from))
      return { storedOn: storedOn.filter(p => !refused.has(p)), errors }
    },

    async dhtFindPeer (cmd, signal) {
      if (typeof cmd.peerId !== 'string') throw new Error('"peerId" must be a peer ID string')
      const target = peerIdFromString(cmd.peerId)
      const errors = []
      for await (const event of dht().findPeer(target, { signal, useCache: cmd.useCache === true })) {
        if (event.name === 'FINAL_PEER') {
          return {
            peerId: event.peer.id.toString(),
            addrs: event.peer.multiaddrs.map(String),
            from: event.from.toString()
          }
        } else if (event.name === 'QUERY_ERROR') {
          errors.push(describeError(event))
        }
      }
      throw new Error(`peer not found: ${JSON.stringify(errors)}`)
    }
  }
}
