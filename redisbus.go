package chat

// The Redis side of an instance. Two components, each owning its own
// goroutines and its own Redis client:
//
//   - the publisher (publish.go) sends messages through the pub client: a
//     Lua script per message, pipelined;
//   - the subscriber (subscribe.go) holds the subscription connections on
//     the sub client (link.go: one, or one per cluster master with sharded
//     Pub/Sub), keeps them subscribed to the rooms that have local members,
//     and reports what arrives to its owner.
//
// They share only the key space and the Pub/Sub mode below. Per room, Redis holds:
//
//   - chat:msg:{room}, the Pub/Sub channel of its messages (a shard
//     channel with sharded Pub/Sub);
//   - chat:room:{room}, a hash of the room's sequence (s: the seq of its
//     last message) and epoch (e: a new one each time the key is created),
//     with the room TTL;
//   - chat:hist:{room}, a stream of its last messages (WithHistory), entry
//     IDs <seq>-0, each the exact bytes published, with the room TTL;
//   - chat:presence:{room}, a hash of who is there on which instance
//     (presence.go).
//
// The {room} hash tag keeps them all in one Redis Cluster slot, so each
// script runs on the one master that owns the room, and with sharded
// Pub/Sub publishes there too.

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/redis/go-redis/v9"
)

// pubsubMode is how an instance uses the rooms' channels: classic Pub/Sub
// (PUBLISH, SUBSCRIBE), where every node of a Redis Cluster relays every
// message, or Redis 7's sharded Pub/Sub (SPUBLISH, SSUBSCRIBE), where a
// message stays on the shard that owns its room's slot.
type pubsubMode bool

const (
	classicPubSub pubsubMode = false
	shardedPubSub pubsubMode = true
)

// publishCommand names the command for scripts, which get it as an argument.
func (m pubsubMode) publishCommand() string {
	if m == shardedPubSub {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// publish sends payload on channel outside a script.
func (m pubsubMode) publish(ctx context.Context, rc redis.UniversalClient, channel string, payload any) error {
	if m == shardedPubSub {
		return rc.SPublish(ctx, channel, payload).Err()
	}
	return rc.Publish(ctx, channel, payload).Err()
}

// keyspace names the Redis keys and channels under a prefix. The {room} hash
// tag keeps a room's key and channel in one Redis Cluster slot.
type keyspace string

func (k keyspace) channel(room string) string { return string(k) + "msg:{" + room + "}" }
func (k keyspace) roomKey(room string) string { return string(k) + "room:{" + room + "}" }
func (k keyspace) histKey(room string) string { return string(k) + "hist:{" + room + "}" }
func (k keyspace) presenceKey(room string) string {
	return string(k) + "presence:{" + room + "}"
}

// roomOf returns the room of a channel name, without allocating.
func (k keyspace) roomOf(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, string(k)+"msg:{")
	if !ok || !strings.HasSuffix(rest, "}") {
		return "", false
	}
	return rest[:len(rest)-1], true
}

// isTimeout reports whether err is a network timeout: for the subscriber's
// reads, "nothing arrived yet", not a broken connection.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
