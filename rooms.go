package chat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Room membership: the Handler is the go-between of the hub, which knows
// who is in which room, and the subscriber, which keeps Redis subscribed to
// the rooms that have local members. Each change in the hub that makes a
// room appear or empty is passed on to the subscriber under roomsMu, so the
// subscriber sees a room's changes in the order they happened.
//
// Lock order: Handler.roomsMu, then hub.mu or subscriber.mu (never both:
// the hub and the subscriber do not call each other), then a room's gates
// (its refill's before a client's catch-up, catchup.go), then client.mu. The
// subscriber reports (subscriptionEvents, below) with none of its locks
// held; the relay of a message takes hub.mu only.

// join puts c in room with what want asks for; the client hears "joined"
// once Redis has confirmed the room's subscription and its read of the
// room's position is done. Called on c's reader goroutine.
func (h *Handler) join(c *client, room, ref string, want joinWant) {
	// Only a join that would add the client to a room costs: joining a room
	// again, or one too many, makes Redis hold nothing new.
	if h.hub.wouldAdd(c, room) && !c.joins.allow(time.Now()) {
		c.sendError(codeRateLimited, "too many joins: at most "+strconv.Itoa(joinsPerMinute)+" a minute after the first "+strconv.Itoa(h.cfg.maxRooms), ref)
		return
	}
	var reads []pendingRead
	h.roomsMu.Lock()
	created, catching := h.hub.join(c, room, ref, want)
	if catching {
		reads = append(reads, pendingRead{c, want})
	}
	if created && h.sub.acquire(room) {
		reads = append(reads, h.hub.subscribed(room, false)...)
	}
	h.roomsMu.Unlock()
	h.startReads(room, reads)
}

// startReads reads Redis for each join of room that is catching up, and
// for the room's members after a lost subscription (gap fill).
func (h *Handler) startReads(room string, reads []pendingRead) {
	for _, pr := range reads {
		fail := func(err error) { h.abandonJoin(pr.c, room, err) }
		finish := func(read joinRead) { h.hub.finishJoin(pr.c, room, read) }
		if pr.c == nil { // the room's members, after a lost subscription
			fail = func(error) { h.stats.redisErrors.Add(1); h.hub.failRefill(room) }
			finish = func(read joinRead) {
				h.stats.gapFills.Add(1)
				h.hub.finishRefill(room, read)
			}
		}
		var read joinRead
		h.readBounded(func(ctx context.Context) (err error) {
			read, err = readForJoin(ctx, h.redis, h.keys, h.cfg.roomTTL, room, pr.want)
			return err
		}, func() { finish(read) }, fail)
	}
}

// readBounded runs read on a goroutine of its own, counted with the
// connections (it serves clients in the hub, whose readers are alive), and
// then exactly one of done and fail: fail with errReadTimeout as soon as
// Redis has not answered within the publish timeout, whatever timeouts the
// client was built with (go-redis bounds a command by those, not by a
// context); else done, or fail with read's error.
func (h *Handler) readBounded(read func(ctx context.Context) error, done func(), fail func(error)) {
	h.conns.Add(1)
	go func() {
		defer h.conns.Done()
		expire := time.AfterFunc(h.cfg.publishTimeout, func() { fail(errReadTimeout) })
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.publishTimeout)
		defer cancel()
		err := read(ctx)
		switch {
		case !expire.Stop(): // answered already
		case err != nil:
			fail(err)
		default:
			done()
		}
	}()
}

var errReadTimeout = errors.New("no answer from Redis in time")

// abandonJoin answers c's join of room "unavailable".
func (h *Handler) abandonJoin(c *client, room string, err error) {
	h.stats.redisErrors.Add(1)
	h.roomsMu.Lock()
	defer h.roomsMu.Unlock()
	if h.hub.failJoin(c, room, err) {
		h.sub.release(room)
	}
}

// leave takes c out of room.
func (h *Handler) leave(c *client, room, ref string) {
	h.roomsMu.Lock()
	defer h.roomsMu.Unlock()
	if h.hub.leave(c, room, ref) {
		h.sub.release(room)
	}
}

// leaveAll takes a departing client out of all its rooms.
func (h *Handler) leaveAll(c *client) {
	h.roomsMu.Lock()
	defer h.roomsMu.Unlock()
	for _, room := range h.hub.removeClient(c) {
		h.sub.release(room)
	}
}

// expireJoins answers "unavailable" to joins that Redis did not confirm
// within the subscribe timeout.
func (h *Handler) expireJoins(ctx context.Context) {
	t := time.NewTicker(h.cfg.subscribeTimeout / 10)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if !h.hub.hasWaiters() {
				continue
			}
			h.roomsMu.Lock()
			for _, room := range h.hub.expireWaiters(now.Add(-h.cfg.subscribeTimeout)) {
				h.sub.release(room)
			}
			h.roomsMu.Unlock()
		}
	}
}

// The Handler's side of subscriptionEvents.

func (h *Handler) roomMessage(room string, payload []byte) {
	if bytes.HasPrefix(payload, []byte(kickPrefix)) {
		h.kicked(room, payload)
		return
	}
	n := h.hub.deliver(room, payload)
	if bytes.HasPrefix(payload, []byte(`{"type":"message"`)) {
		h.stats.deliveries.Add(uint64(n)) // messages, not presence notices
	}
}

// Kick takes user out of room on every instance, through Redis: each of the
// user's clients in the room gets {"type":"left","room":…,"reason":"kicked"}
// and no more of the room's messages. Whether the user may join again is
// WithAuthorize's decision. The kick travels on the room's channel, in
// order with its messages, so nothing published after it reaches the user.
func (h *Handler) Kick(ctx context.Context, room, user string) error {
	switch {
	case !validRoom(room):
		return ErrInvalidRoom
	case !validUser(user):
		return ErrInvalidUser
	}
	if err := h.mode.publish(ctx, h.redis, h.keys.channel(room), kickPayload(room, user)); err != nil {
		return fmt.Errorf("%w: kick %s from %s: %v", ErrUnavailable, user, room, err)
	}
	return nil
}

// kicked acts on a kick that came through the room's channel.
func (h *Handler) kicked(room string, payload []byte) {
	var k struct{ Room, User string }
	if json.Unmarshal(payload, &k) != nil || k.Room != room {
		return
	}
	h.roomsMu.Lock()
	defer h.roomsMu.Unlock()
	if h.hub.kick(room, k.User) {
		h.sub.release(room)
	}
}

func (h *Handler) roomSubscribed(room string, resumed bool) {
	if cc, ok := h.redis.(*redis.ClusterClient); ok && resumed && h.mode == shardedPubSub {
		// The room may have a new master, which the publishing client
		// would otherwise learn of only from a MOVED, or after a publish to
		// the old one failed.
		cc.ReloadState(context.Background())
	}
	h.roomsMu.Lock()
	reads := h.hub.subscribed(room, resumed)
	h.roomsMu.Unlock()
	h.startReads(room, reads)
}

func (h *Handler) roomSubscribeFailed(room string) {
	h.roomsMu.Lock()
	defer h.roomsMu.Unlock()
	if h.hub.subscriptionFailed(room) {
		h.sub.release(room)
	}
}

func (h *Handler) subscriptionsLost(rooms []string) {
	h.roomsMu.Lock()
	defer h.roomsMu.Unlock()
	h.hub.subscriptionsLost(rooms)
}
