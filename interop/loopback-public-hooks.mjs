// Module resolve hook for loopback-public.mjs (runs on Node's loader thread).

const REPLACEMENT = new URL('./libp2p-utils-public.mjs', import.meta.url).href

// The packages whose "is this address private?" answers are replaced.
const PATCHED = ['/node_modules/@libp2p/autonat-v2/', '/node_modules/@libp2p/dcutr/']

export async function resolve (specifier, context, nextResolve) {
  const parent = context.parentURL ?? ''
  if (specifier === '@libp2p/utils' && PATCHED.some(p => parent.includes(p))) {
    return { url: REPLACEMENT, shortCircuit: true }
  }
  return nextResolve(specifier, context)
}
