package chat

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// roomActivity maintains the rooms' activity keys (chat:room:{room}): a key
// exists while its room shows signs of life, and expires ttl after the last
// one. Signs of life are a message (the publish script sets the key in the
// same round trip), a first local member (touch, before "joined"), and,
// every ttl/3, every room this instance still has members in (refreshLoop).
// So a key outlives the room's last member by at most ttl, and a room with
// members never expires, without a Redis command per join or per message.
type roomActivity struct {
	redis redis.UniversalClient // the publishing client
	keys  keyspace
	ttl   time.Duration
}

// ensureRoomLua creates a room's key if it is missing (seq 0, a new epoch,
// and no history from an older epoch) and refreshes the TTLs of the key and
// the history together. A missing key is one that expired or that Redis
// lost; either way the room starts a new epoch. Scripts that start with it
// take KEYS: room hash, history stream; ARGV[1]: TTL (s).
const ensureRoomLua = `if redis.call('HSETNX', KEYS[1], 's', 0) == 1 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'e', t[1] .. '.' .. t[2])
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
`

// touchScript keeps a room alive: ensureRoomLua alone.
const touchScript = ensureRoomLua + `return 1`

// touch refreshes the keys of rooms, creating those that are missing, in one
// pipelined round trip (per node on a Cluster).
func (a *roomActivity) touch(ctx context.Context, rooms ...string) error {
	if len(rooms) == 0 {
		return nil
	}
	ttl := int64(a.ttl / time.Second)
	_, err := a.redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, room := range rooms {
			p.Eval(ctx, touchScript, []string{a.keys.roomKey(room), a.keys.histKey(room)}, ttl)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("refresh room keys: %w", err)
	}
	return nil
}

func (a *roomActivity) active(ctx context.Context, room string) (bool, error) {
	n, err := a.redis.Exists(ctx, a.keys.roomKey(room)).Result()
	if err != nil {
		return false, fmt.Errorf("%w: exists %s: %v", ErrUnavailable, a.keys.roomKey(room), err)
	}
	return n == 1, nil
}

// refreshLoop keeps the keys of the rooms returned by rooms alive.
func (a *roomActivity) refreshLoop(ctx context.Context, rooms func() []string, log *slog.Logger) {
	t := time.NewTicker(a.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		names := rooms()
		tctx, cancel := context.WithTimeout(ctx, a.ttl/3)
		if err := a.touch(tctx, names...); err != nil {
			log.Warn("cannot refresh room activity keys", "rooms", len(names), "err", err)
		}
		cancel()
	}
}
