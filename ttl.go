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

// touch sets the keys of rooms, in one pipelined round trip (per node on a
// Cluster). SET rather than EXPIRE, so an expired or evicted key comes back.
func (a *roomActivity) touch(ctx context.Context, rooms ...string) error {
	if len(rooms) == 0 {
		return nil
	}
	_, err := a.redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, room := range rooms {
			p.Set(ctx, a.keys.roomKey(room), "1", a.ttl)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set activity keys: %w", err)
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
