package chat

// The Redis side of an instance. Two components, each owning its own
// goroutines and its own Redis client:
//
//   - the publisher (publish.go) sends messages through the pub client: a
//     Lua script per message, pipelined;
//   - the subscriber (subscribe.go) holds the one subscription connection on
//     the sub client, keeps it subscribed to the rooms that have local
//     members, and reports what arrives to its owner.
//
// They share only the key space below. Per room, Redis holds:
//
//   - chat:msg:{room}, the Pub/Sub channel of its messages;
//   - chat:room:{room}, a hash of the room's sequence (s: the seq of its
//     last message) and epoch (e: a new one each time the key is created),
//     with the room TTL;
//   - chat:hist:{room}, a stream of its last messages (WithHistory), entry
//     IDs <seq>-0, each the exact bytes published, with the room TTL;
//   - chat:presence:{room}, a hash of who is there on which instance
//     (presence.go).
//
// The {room} hash tag keeps them all in one Redis Cluster slot.

import (
	"errors"
	"net"
	"strings"
)

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
