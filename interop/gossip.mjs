// @libp2p/gossipsub for the interop peer (peer.mjs --gossipsub): the
// service, its commands and its events.
//
// The service is js-libp2p's gossipsub with StrictSign (every message signed
// with the peer's Ed25519 key, every incoming message's signature checked),
// as Beam publishes and requires; the rest are the package's defaults
// (D=6, flood publishing, /meshsub/1.2.0, 1.1.0 and 1.0.0).
//
// Commands (data is base64):
//   gossipSubscribe {topic} -> {topics}
//   gossipUnsubscribe {topic} -> {topics}
//   gossipPublish {topic, data} -> {recipients}   fails (NoPeersSubscribedToTopic)
//       when no peer is known to subscribe to topic
//   gossipSubscribers {topic} -> {peers}           peers known to subscribe
//   gossipMesh {topic} -> {peers}                  our mesh for topic
//   gossipScore {peerId} -> {score}                our score of that peer
// Events:
//   {"event":"gossip","topic","from","seqno","data","msgId","via"} for each
//       message the service delivered (signature verified); "from" is the
//       signer's peer ID, "via" the peer that relayed it, "seqno" a decimal
//       string
//   {"event":"gossip:subscription","peerId","subscriptions":[{topic, subscribe}]}
//       a peer announced (un)subscriptions

import { gossipsub, StrictSign } from '@libp2p/gossipsub'

export function gossipService () {
  return gossipsub({ globalSignaturePolicy: StrictSign })
}

function needTopic (cmd) {
  if (typeof cmd.topic !== 'string' || cmd.topic === '') throw new Error('"topic" must be a non-empty string')
  return cmd.topic
}

export function makeGossipCommands (node) {
  const pubsub = () => {
    const service = node.services.pubsub
    if (service == null) throw new Error('start the peer with --gossipsub')
    return service
  }
  return {
    async gossipSubscribe (cmd) {
      pubsub().subscribe(needTopic(cmd))
      return { topics: pubsub().getTopics() }
    },

    async gossipUnsubscribe (cmd) {
      pubsub().unsubscribe(needTopic(cmd))
      return { topics: pubsub().getTopics() }
    },

    async gossipPublish (cmd) {
      if (typeof cmd.data !== 'string') throw new Error('"data" must be base64')
      const result = await pubsub().publish(needTopic(cmd), Buffer.from(cmd.data, 'base64'))
      return { recipients: result.recipients.map(p => p.toString()) }
    },

    async gossipSubscribers (cmd) {
      return { peers: pubsub().getSubscribers(needTopic(cmd)).map(p => p.toString()) }
    },

    async gossipMesh (cmd) {
      return { peers: pubsub().getMeshPeers(needTopic(cmd)) }
    },

    async gossipScore (cmd) {
      if (typeof cmd.peerId !== 'string') throw new Error('"peerId" must be a peer ID string')
      return { score: pubsub().getScore(cmd.peerId) }
    }
  }
}

export function watchGossip (node, emit) {
  const pubsub = node.services.pubsub
  pubsub.addEventListener('gossipsub:message', (evt) => {
    const { propagationSource, msgId, msg } = evt.detail
    emit({
      event: 'gossip',
      topic: msg.topic,
      from: msg.type === 'signed' ? msg.from.toString() : null,
      seqno: msg.type === 'signed' ? msg.sequenceNumber.toString() : null,
      data: Buffer.from(msg.data).toString('base64'),
      msgId,
      via: propagationSource.toString()
    })
  })
  pubsub.addEventListener('subscription-change', (evt) => {
    emit({
      event: 'gossip:subscription',
      peerId: evt.detail.peerId.toString(),
      subscriptions: evt.detail.subscriptions.map(s => ({ topic: s.topic, subscribe: s.subscribe }))
    })
  })
}
