// Loaded with `node --import ./polyfill.mjs` before anything from js-libp2p.
//
// js-libp2p 3.x targets Node 22+, but the project's machines run Node 20.
// The pinned dependency tree (see package-lock.json) uses two ES2024/2025
// built-ins that Node 20 lacks:
//
//   * Promise.withResolvers: libp2p, @libp2p/utils, yamux, ping, mortice, ...
//   * Set.prototype.difference (and friends): @libp2p/kad-dht's routing table.
//
// Each shim is installed only when the built-in is missing, so on a newer
// Node this file does nothing.  The shims follow the spec's observable
// behaviour closely enough for the library's use; they are not general
// purpose replacements.

function define (target, name, value) {
  if (typeof target[name] === 'function') {
    return
  }
  Object.defineProperty(target, name, {
    value,
    writable: true,
    configurable: true,
    enumerable: false
  })
}

define(Promise, 'withResolvers', function withResolvers () {
  let resolve
  let reject
  const promise = new this((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
})

// ES2025 Set methods.  `other` is any "set-like": it has size, has() and
// keys(); Sets and Maps both qualify.
function otherKeys (other) {
  return typeof other.keys === 'function' ? other.keys() : other[Symbol.iterator]()
}

define(Set.prototype, 'union', function union (other) {
  const out = new Set(this)
  for (const v of otherKeys(other)) out.add(v)
  return out
})

define(Set.prototype, 'intersection', function intersection (other) {
  const out = new Set()
  for (const v of this) if (other.has(v)) out.add(v)
  return out
})

define(Set.prototype, 'difference', function difference (other) {
  const out = new Set()
  for (const v of this) if (!other.has(v)) out.add(v)
  return out
})

define(Set.prototype, 'symmetricDifference', function symmetricDifference (other) {
  const out = new Set(this)
  for (const v of otherKeys(other)) {
    if (this.has(v)) out.delete(v)
    else out.add(v)
  }
  return out
})

define(Set.prototype, 'isSubsetOf', function isSubsetOf (other) {
  for (const v of this) if (!other.has(v)) return false
  return true
})

define(Set.prototype, 'isSupersetOf', function isSupersetOf (other) {
  for (const v of otherKeys(other)) if (!this.has(v)) return false
  return true
})

define(Set.prototype, 'isDisjointFrom', function isDisjointFrom (other) {
  for (const v of this) if (other.has(v)) return false
  return true
})

// Array.fromAsync (Node 22): not used by the pinned tree today, but it is the
// next most likely thing a patch release would start using.
define(Array, 'fromAsync', async function fromAsync (items, mapFn, thisArg) {
  const out = []
  let i = 0
  for await (const item of items) {
    out.push(mapFn === undefined ? item : await mapFn.call(thisArg, item, i))
    i++
  }
  return out
})
