package chat

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// A room's messages are numbered by the publish script (publish.go): seq 1,
// 2, 3, … within an epoch, which changes when the room's key is created
// anew. The last WithHistory messages stay in the room's stream. This file
// reads them back: for a join (its position, and the messages it asked
// for) and for History.

// roomPosition is where a room's sequence stands: the epoch and the seq of
// its last message (0 before the first).
type roomPosition struct {
	epoch string
	seq   int64
}

// joinWant is what a join asks for besides the room.
type joinWant struct {
	history int       // the latest messages to send with "joined", at most
	since   *position // send every message after this position (recovery)
	// last, for a gap fill, is the message the members got last, at seq
	// since: the gap is filled only if Redis still holds that very message
	// there. A failover to a replica that had not received it numbers
	// another message with that seq, and the gap is then unfillable.
	last []byte
}

// readScript ensures the room's key (ensureRoomLua) and returns in one
// atomic step the room's seq and epoch, the stream's entries after seq
// ARGV[2] (none if it is negative), and its latest ARGV[3] entries, newest
// first.
//
// KEYS: room hash, history stream. ARGV: TTL (s), since, count.
const readScript = ensureRoomLua + `local st = redis.call('HMGET', KEYS[1], 's', 'e')
local after, latest = {}, {}
if tonumber(ARGV[2]) >= 0 then
  after = redis.call('XRANGE', KEYS[2], (tonumber(ARGV[2]) + 1) .. '-0', '+')
end
if tonumber(ARGV[3]) > 0 then
  latest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
end
return {st[1], st[2], after, latest}`

// joinRead is what a join learns from Redis.
type joinRead struct {
	at       roomPosition
	messages [][]byte // stored frames, oldest first; nil if none were asked for
	recovery *bool    // whether since could be continued; nil if not asked
}

// readForJoin reads room's position and what want asks for, in one round
// trip. Asked for both, a join gets the messages after since if they can
// all be given (recovered), and the latest history messages otherwise.
func readForJoin(ctx context.Context, rc redis.UniversalClient, keys keyspace, ttl time.Duration, room string, want joinWant) (joinRead, error) {
	since := int64(-1)
	if want.since != nil {
		since = *want.since.Seq
		if want.last != nil {
			since-- // read the last message too, to compare it
		}
	}
	res, err := rc.Eval(ctx, readScript, []string{keys.roomKey(room), keys.histKey(room)},
		int64(ttl/time.Second), since, want.history).Slice()
	if err != nil {
		return joinRead{}, fmt.Errorf("%w: read room %s: %v", ErrUnavailable, room, err)
	}
	if len(res) != 4 {
		return joinRead{}, fmt.Errorf("%w: read room %s: %d results", ErrUnavailable, room, len(res))
	}
	var r joinRead
	seq, _ := res[0].(string)
	r.at.epoch, _ = res[1].(string)
	r.at.seq, _ = strconv.ParseInt(seq, 10, 64)
	after, latest := streamFrames(res[2]), streamFrames(res[3])
	if want.since != nil {
		s := *want.since.Seq
		same := true
		if want.last != nil {
			same = len(after) > 0 && seqOf(after[0]) == s && bytes.Equal(after[0], want.last)
			if same {
				after = after[1:]
			}
		}
		ok := same && want.since.Epoch == r.at.epoch && s <= r.at.seq &&
			(s == r.at.seq || len(after) > 0 && seqOf(after[0]) == s+1)
		r.recovery = &ok
		if ok {
			r.messages = append([][]byte{}, after...) // present even when empty
			return r, nil
		}
	}
	if want.history > 0 || want.since != nil {
		// XREVRANGE gave the newest first.
		for i, j := 0, len(latest)-1; i < j; i, j = i+1, j-1 {
			latest[i], latest[j] = latest[j], latest[i]
		}
		r.messages = latest
		if r.messages == nil {
			r.messages = [][]byte{}
		}
	}
	return r, nil
}

// streamFrames returns the stored frames of stream entries as XRANGE
// returns them through go-redis: [[id, [field, value]], …].
func streamFrames(v any) [][]byte {
	entries, _ := v.([]any)
	var frames [][]byte
	for _, e := range entries {
		entry, _ := e.([]any)
		if len(entry) != 2 {
			continue
		}
		fields, _ := entry[1].([]any)
		if len(fields) == 2 {
			if m, ok := fields[1].(string); ok {
				frames = append(frames, []byte(m))
			}
		}
	}
	return frames
}

// seqOf returns the seq the publish script spliced in at the end of a
// message frame (…,"seq":N}), or 0 if the frame has none: a message that
// something else published on the channel.
func seqOf(frame []byte) int64 {
	const key = `,"seq":`
	if len(frame) < len(key)+2 || frame[len(frame)-1] != '}' {
		return 0
	}
	i := bytes.LastIndex(frame, []byte(key))
	if i < 0 {
		return 0
	}
	// Digits by hand: this runs once per relayed message, and ParseInt's
	// string would escape into its error.
	digits := frame[i+len(key) : len(frame)-1]
	if len(digits) == 0 || len(digits) > 18 {
		return 0
	}
	var n int64
	for _, d := range digits {
		if d < '0' || d > '9' {
			return 0
		}
		n = n*10 + int64(d-'0')
	}
	return n
}

// History returns up to n of room's latest messages, oldest first, as Redis
// keeps them (WithHistory): for a server-side render of a room, say. It
// reads Redis only; the room need not have members here.
func (h *Handler) History(ctx context.Context, room string, n int) ([]Message, error) {
	if !validRoom(room) {
		return nil, ErrInvalidRoom
	}
	if n <= 0 {
		return nil, nil
	}
	entries, err := h.redis.XRevRangeN(ctx, h.keys.histKey(room), "+", "-", int64(n)).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: history of %s: %v", ErrUnavailable, room, err)
	}
	msgs := make([]Message, 0, len(entries))
	for i := len(entries) - 1; i >= 0; i-- {
		payload, _ := entries[i].Values["m"].(string)
		var m Message
		if err := json.Unmarshal([]byte(payload), &m); err != nil {
			continue // not a message frame: something else wrote to the stream
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}
