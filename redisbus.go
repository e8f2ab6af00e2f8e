package chat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// keyspace names the Redis keys and channels under a prefix. The {room} hash
// tag keeps a room's key and channel in one Redis Cluster slot.
type keyspace string

func (k keyspace) channel(room string) string { return string(k) + "msg:{" + room + "}" }
func (k keyspace) roomKey(room string) string { return string(k) + "room:{" + room + "}" }

// roomOf returns the room of a channel name, without allocating.
func (k keyspace) roomOf(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, string(k)+"msg:{")
	if !ok || !strings.HasSuffix(rest, "}") {
		return "", false
	}
	return rest[:len(rest)-1], true
}

// publishScript refreshes the room's activity key and publishes the message
// atomically. Keyed on the room key, it runs on the node owning the room's
// slot in a Cluster, so each room has one ordering point.
const publishScript = `redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return redis.call('PUBLISH', ARGV[2], ARGV[3])`

// Publishing is pipelined and batched. Each publisher goroutine owns a
// queue and sends everything waiting in it as one pipeline, so under load a
// Redis round trip, and its syscalls, carries many messages. All of a
// client's messages go through the same publisher, whose queue and single
// pipeline in flight keep them in order. The client does not wait for Redis
// before its next frame, so a burst of messages stays a burst all the way to
// the members' sockets, where each writer sends it in one write.
const (
	publishers      = 4   // pipelines in flight at once
	maxPublishBatch = 256 // messages per pipeline, and the length of each queue
)

// publishRequest is one message waiting for its pipeline. A client's message
// reports a failure to its sender as an error frame (from, ref);
// Handler.Publish waits for the outcome on done.
type publishRequest struct {
	room  string
	frame []byte
	from  *client
	ref   string
	done  chan error // buffered: the publisher never waits
}

// redisBus owns the instance's two Redis roles. Publishing goes through the
// pub client's pool. Subscribing uses one PubSub connection on sub, read by
// exactly one goroutine (receiveLoop), while subscribeLoop sends SUBSCRIBE
// and UNSUBSCRIBE commands as rooms gain their first or lose their last
// local member.
//
// go-redis's Subscribe returns before Redis confirms, and a confirmation is
// the only proof that messages will arrive, so the bus tracks each room's
// subscription itself (subState) and tells the hub when it is confirmed.
type redisBus struct {
	pub, sub redis.UniversalClient
	keys     keyspace
	hub      *hub
	activity *roomActivity
	cfg      *config
	log      *slog.Logger

	mu    sync.Mutex
	subs  map[string]*subState // by room
	dirty map[string]struct{}  // rooms whose wanted state may differ from Redis's
	kick  chan struct{}        // wakes subscribeLoop; buffered, 1

	pubQueues  [publishers]chan *publishRequest
	pubStopped chan struct{} // closed when the publishers have returned

	psMu     sync.Mutex    // serialises commands on ps and its replacement
	ps       *redis.PubSub // nil until the first subscription
	psReady  chan struct{} // closed when ps is first set
	psClosed bool          // close ran: no new PubSub
}

// subState is one room's subscription as the bus knows it. At most one
// command per room is unanswered at a time (inFlight), so every reply can
// be matched to the command it answers and a stale "unsubscribe" can never
// be taken for a fresh "subscribe".
type subState struct {
	want        bool // a local member or joiner needs the room
	confirmed   bool // Redis's last word on the room was "subscribe"
	inFlight    bool // a command for the room awaits its reply
	resubscribe bool // our last command was SUBSCRIBE: go-redis resubscribes it after a reconnect
	interrupted bool // was confirmed when the connection was lost: next confirmation resumes
}

func newRedisBus(pub, sub redis.UniversalClient, keys keyspace, h *hub, a *roomActivity, cfg *config, log *slog.Logger) *redisBus {
	b := &redisBus{
		pub: pub, sub: sub, keys: keys, hub: h, activity: a, cfg: cfg, log: log,
		subs:    make(map[string]*subState),
		dirty:   make(map[string]struct{}),
		kick:    make(chan struct{}, 1),
		psReady: make(chan struct{}),

		pubStopped: make(chan struct{}),
	}
	for i := range b.pubQueues {
		b.pubQueues[i] = make(chan *publishRequest, maxPublishBatch)
	}
	return b
}

// publishFrom queues a client's message on the client's publisher. It blocks
// only while that queue is full, which slows the sender down, or until ctx
// (the connection's) ends. A failure comes back to the client as an
// "unavailable" error frame with the message's ref.
func (b *redisBus) publishFrom(ctx context.Context, c *client, room string, frame []byte, ref string) {
	req := &publishRequest{room: room, frame: frame, from: c, ref: ref}
	select {
	case b.pubQueues[c.publisher] <- req:
	case <-ctx.Done():
	}
}

// publish sends one message and returns once Redis has answered. Any
// failure is ErrUnavailable.
func (b *redisBus) publish(ctx context.Context, room string, frame []byte) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.publishTimeout)
	defer cancel()
	req := &publishRequest{room: room, frame: frame, done: make(chan error, 1)}
	var err error
	select {
	case b.pubQueues[rand.IntN(publishers)] <- req:
		select {
		case err = <-req.done:
		case <-ctx.Done():
			err = ctx.Err()
		case <-b.pubStopped:
			err = ErrClosed
		}
	case <-ctx.Done():
		err = ctx.Err()
	case <-b.pubStopped:
		err = ErrClosed
	}
	if err != nil {
		return fmt.Errorf("%w: publish to %s: %v", ErrUnavailable, room, err)
	}
	return nil
}

// publishLoop is one publisher: it sends whatever is in its queue, up to
// maxPublishBatch messages, as one pipeline, and reports the outcomes.
func (b *redisBus) publishLoop(ctx context.Context, queue <-chan *publishRequest) {
	batch := make([]*publishRequest, 0, maxPublishBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-queue:
			batch = append(batch, req)
		}
	more:
		for len(batch) < maxPublishBatch {
			select {
			case req := <-queue:
				batch = append(batch, req)
			default:
				break more
			}
		}
		// A batch taken is finished, even during Shutdown.
		errs := b.publishBatch(context.WithoutCancel(ctx), batch)
		failed := 0
		for i, req := range batch {
			switch {
			case req.done != nil:
				req.done <- errs[i]
			case errs[i] != nil:
				failed++
				req.from.sendError(codeUnavailable, "message not sent: Redis is unavailable", req.ref)
			}
		}
		if failed > 0 {
			b.log.Warn("publish failed; senders told", "messages", failed, "err", errs[0])
		}
		clear(batch)
		batch = batch[:0]
	}
}

// publishBatch runs the publish script for every message of batch in one
// pipeline and returns each message's error.
func (b *redisBus) publishBatch(ctx context.Context, batch []*publishRequest) []error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.publishTimeout)
	defer cancel()
	ttl := int64(b.cfg.roomTTL / time.Second)
	// EVAL with the source, not EVALSHA: a Redis that lost its script cache
	// (restart, failover, SCRIPT FLUSH) would answer NOSCRIPT to some
	// messages of a batch and not to later ones once another connection
	// loaded the script, and sending the failed ones again would reorder a
	// sender's messages. Redis finds the cached script by hashing these few
	// bytes.
	cmds, _ := b.pub.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range batch {
			p.Eval(ctx, publishScript, []string{b.keys.roomKey(r.room)}, ttl, b.keys.channel(r.room), r.frame)
		}
		return nil
	})
	errs := make([]error, len(batch))
	for i, cmd := range cmds {
		errs[i] = cmd.Err()
	}
	return errs
}

// acquire records that room has a local member or joiner. It reports
// whether the subscription is already confirmed (the joiner can be told at
// once); otherwise the hub hears hub.subscribed when it is. Called with
// hub.mu held.
func (b *redisBus) acquire(room string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.subs[room]
	if s == nil {
		s = &subState{}
		b.subs[room] = s
	}
	s.want = true
	if s.confirmed && !s.inFlight {
		return true
	}
	b.markDirtyLocked(room)
	return false
}

// release records that room has no local member any more. Called with
// hub.mu held.
func (b *redisBus) release(room string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.subs[room]; s != nil {
		s.want = false
		b.markDirtyLocked(room)
	}
}

func (b *redisBus) markDirtyLocked(room string) {
	b.dirty[room] = struct{}{}
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// subscribeLoop brings Redis in line with what the hub wants, one batch of
// SUBSCRIBE and one of UNSUBSCRIBE per wake-up.
func (b *redisBus) subscribeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
		}
		b.sync(ctx)
	}
}

// sync sends what the rooms marked dirty need. psMu is held only for the commands: never across the room keys' round
// trip on the pub client, which could otherwise hold up the watchdog's
// replacement of a silent connection. A replacement that slips in between
// resubscribes the rooms itself; the extra SUBSCRIBE or UNSUBSCRIBE then
// only earns a redundant confirmation.
func (b *redisBus) sync(ctx context.Context) {
	var subRooms, unsubRooms []string
	b.mu.Lock()
	for room := range b.dirty {
		s := b.subs[room]
		switch {
		case s == nil || s.inFlight:
			continue // the reply will mark the room dirty again if need be
		case s.want && !s.confirmed:
			s.inFlight, s.resubscribe = true, true
			subRooms = append(subRooms, room)
		case !s.want && s.confirmed:
			s.inFlight, s.resubscribe = true, false
			unsubRooms = append(unsubRooms, room)
		case !s.want && !s.confirmed:
			delete(b.subs, room)
		}
		delete(b.dirty, room)
	}
	b.mu.Unlock()

	if len(subRooms) > 0 {
		// The key first, so that a room is active once a joiner hears "joined".
		tctx, cancel := context.WithTimeout(ctx, b.cfg.publishTimeout)
		if err := b.activity.touch(tctx, subRooms...); err != nil {
			b.log.Warn("cannot set room activity keys", "rooms", len(subRooms), "err", err)
		}
		cancel()
	}
	b.psMu.Lock()
	defer b.psMu.Unlock()
	if len(subRooms) > 0 {
		b.log.Debug("subscribing", "rooms", subRooms)
		if err := b.command(ctx, "subscribe", subRooms); err != nil {
			b.log.Warn("subscribe failed", "rooms", subRooms, "err", err)
			b.commandFailed(subRooms)
			for _, room := range subRooms {
				b.hub.subscriptionFailed(room)
			}
		}
	}
	if len(unsubRooms) > 0 {
		b.log.Debug("unsubscribing", "rooms", unsubRooms)
		if err := b.command(ctx, "unsubscribe", unsubRooms); err != nil {
			// go-redis forgets the channels anyway, so they are not
			// resubscribed when the connection comes back.
			b.log.Warn("unsubscribe failed", "rooms", unsubRooms, "err", err)
			b.commandFailed(unsubRooms)
		}
	}
}

// command sends SUBSCRIBE or UNSUBSCRIBE for rooms. Called with psMu held;
// it writes to the subscription connection and waits for nothing.
func (b *redisBus) command(ctx context.Context, kind string, rooms []string) error {
	channels := make([]string, len(rooms))
	for i, room := range rooms {
		channels[i] = b.keys.channel(room)
	}
	if b.psClosed {
		return redis.ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.subscribeTimeout)
	defer cancel()
	if b.ps == nil {
		// Created with its first channel, never empty (NOTES §5). Its
		// errors surface in receiveLoop; the join timeout covers them.
		b.ps = b.sub.Subscribe(ctx, channels...)
		close(b.psReady)
		return nil
	}
	if kind == "subscribe" {
		return b.ps.Subscribe(ctx, channels...)
	}
	return b.ps.Unsubscribe(ctx, channels...)
}

// commandFailed: no reply will come for rooms' commands.
func (b *redisBus) commandFailed(rooms []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, room := range rooms {
		if s := b.subs[room]; s != nil {
			s.inFlight = false
			s.confirmed = false
			// go-redis keeps a channel it failed to subscribe and subscribes
			// it on reconnect; an unsubscribed one it forgets.
		}
	}
}

// receiveLoop is the only reader of the subscription connection. It never
// blocks on clients (the hub only queues), confirms subscriptions, expires
// joins Redis did not confirm in time, and watches the connection: a ping
// when idle, and a new connection when nothing at all came back for
// staleAfter, because a silently frozen connection raises no error.
func (b *redisBus) receiveLoop(ctx context.Context) {
	tick := time.NewTicker(b.cfg.redisPing)
	defer tick.Stop()
	for { // until the first subscription
		b.hub.expireWaiters(time.Now(), b.cfg.subscribeTimeout)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			continue
		case <-b.psReady:
		}
		break
	}
	b.psMu.Lock()
	ps := b.ps
	b.psMu.Unlock()

	staleAfter := 4 * b.cfg.redisPing
	lastFrame := time.Now()
	var backoff time.Duration
	down := false
	for ctx.Err() == nil {
		now := time.Now()
		b.hub.expireWaiters(now, b.cfg.subscribeTimeout)
		msg, err := ps.ReceiveTimeout(ctx, b.cfg.redisPing)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if isTimeout(err) {
				if time.Since(lastFrame) < staleAfter {
					_ = ps.Ping(ctx) // a write error shows up in the next receive
					continue
				}
				b.log.Warn("Redis subscription connection silent: reconnecting; messages may have been lost", "silent_for", time.Since(lastFrame).Round(time.Millisecond))
				ps = b.replace(ctx)
				lastFrame = time.Now()
				continue
			}
			// The connection broke. go-redis reconnects on the next
			// receive and resubscribes every channel it has.
			if !down {
				down = true
				b.log.Warn("Redis subscription connection lost; messages published until it is back are lost", "err", err)
			}
			b.connectionLost(false)
			backoff = min(max(2*backoff, 50*time.Millisecond), time.Second)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		lastFrame = time.Now()
		backoff = 0
		if down {
			down = false
			b.log.Info("Redis subscription connection back")
		}
		switch m := msg.(type) {
		case *redis.Message:
			if room, ok := b.keys.roomOf(m.Channel); ok {
				b.hub.deliver(room, []byte(m.Payload))
			}
		case *redis.Subscription:
			b.confirm(m)
		}
	}
}

// confirm applies Redis's reply to a SUBSCRIBE or UNSUBSCRIBE.
func (b *redisBus) confirm(m *redis.Subscription) {
	room, ok := b.keys.roomOf(m.Channel)
	if !ok {
		return
	}
	b.mu.Lock()
	s := b.subs[room]
	if s == nil {
		s = &subState{}
		b.subs[room] = s
	}
	s.inFlight = false
	switch m.Kind {
	case "subscribe":
		s.confirmed = true
		resumed := s.interrupted
		s.interrupted = false
		if !s.want {
			b.markDirtyLocked(room) // unwanted meanwhile: unsubscribe
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		if resumed {
			b.log.Info("resubscribed after a lost connection; members told they may have missed messages", "room", room)
		}
		b.hub.subscribed(room, resumed)
	case "unsubscribe":
		s.confirmed = false
		b.markDirtyLocked(room) // wanted again meanwhile, or to forget
		b.mu.Unlock()
	default:
		b.mu.Unlock()
	}
}

// connectionLost resets every room's state after the subscription connection
// failed: no reply is coming for the commands sent on it. A new confirmation
// comes for the rooms go-redis resubscribes by itself (replaced false: those
// whose last command was SUBSCRIBE), or for every wanted room when the bus
// made a new PubSub (replaced true, the rooms returned). Other wanted rooms
// are left to subscribeLoop.
func (b *redisBus) connectionLost(replaced bool) []string {
	b.mu.Lock()
	var wanted []string
	for room, s := range b.subs {
		if s.confirmed {
			s.interrupted = true
		}
		s.confirmed = false
		if replaced {
			s.resubscribe = s.want
		}
		s.inFlight = s.resubscribe
		switch {
		case s.want && s.resubscribe:
			wanted = append(wanted, room)
		case s.want:
			b.markDirtyLocked(room)
		case !s.inFlight:
			delete(b.subs, room)
		}
	}
	b.mu.Unlock()
	b.hub.subscriptionsLost()
	return wanted
}

// replace closes a silent PubSub and subscribes a new one to every wanted
// room; the confirmations then resume the rooms.
func (b *redisBus) replace(ctx context.Context) *redis.PubSub {
	b.psMu.Lock()
	defer b.psMu.Unlock()
	if b.psClosed {
		return b.ps
	}
	_ = b.ps.Close()
	wanted := b.connectionLost(true)
	channels := make([]string, len(wanted))
	for i, room := range wanted {
		channels[i] = b.keys.channel(room)
	}
	b.ps = b.sub.Subscribe(ctx, channels...)
	return b.ps
}

// close ends the subscription connection; Redis drops its subscriptions.
// Closing it also wakes receiveLoop from a pending read.
func (b *redisBus) close() {
	b.psMu.Lock()
	defer b.psMu.Unlock()
	b.psClosed = true
	if b.ps != nil {
		if err := b.ps.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
			b.log.Debug("closing the subscription connection", "err", err)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
