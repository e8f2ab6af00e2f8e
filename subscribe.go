package chat

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// subscriptionEvents is how the subscriber reports to its owner, the
// Handler. Every call comes from one of the subscriber's goroutines with
// none of its locks held, and must not block: the reader waits for it.
type subscriptionEvents interface {
	// roomMessage: a payload arrived on room's channel.
	roomMessage(room string, payload []byte)
	// roomSubscribed: Redis confirmed the subscription to room; from now on
	// every message published to it arrives. resumed: the room was
	// subscribed before the connection was lost, so messages may be missing.
	roomSubscribed(room string, resumed bool)
	// roomSubscribeFailed: the SUBSCRIBE for room could not be sent; no
	// confirmation will come for it.
	roomSubscribeFailed(room string)
	// subscriptionsLost: the connection failed or was replaced; until each
	// room is confirmed again (roomSubscribed), messages may be missed.
	subscriptionsLost()
}

// subscriber owns the instance's one subscription connection (a PubSub on
// the sub client) and keeps it subscribed to exactly the rooms its owner
// wants (acquire, release). Two goroutines: reconcile sends SUBSCRIBE and
// UNSUBSCRIBE as rooms gain their first or lose their last local member,
// and receive is the connection's only reader.
//
// go-redis's Subscribe returns before Redis confirms, and a confirmation is
// the only proof that messages will arrive, so the subscriber tracks each
// room's subscription itself (subState) and reports the confirmation.
type subscriber struct {
	redis    redis.UniversalClient
	keys     keyspace
	activity *roomActivity
	events   subscriptionEvents
	log      *slog.Logger
	stats    *counters

	confirmTimeout time.Duration // bound on sending a command
	keyTimeout     time.Duration // bound on setting the room keys before a SUBSCRIBE
	pingEvery      time.Duration // liveness probe when the connection is idle

	mu    sync.Mutex
	rooms map[string]*subState
	dirty map[string]struct{} // rooms whose wanted state may differ from Redis's
	wake  chan struct{}       // wakes reconcile; buffered, 1

	psMu     sync.Mutex    // serialises commands on ps and its replacement
	ps       *redis.PubSub // nil until the first subscription
	psReady  chan struct{} // closed when ps is first set
	psClosed bool          // close ran: no new PubSub

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// subState is one room's subscription as the subscriber knows it. At most
// one command per room is unanswered at a time (inFlight), so every reply
// can be matched to the command it answers and a stale "unsubscribe" can
// never be taken for a fresh "subscribe".
type subState struct {
	want        bool // the owner needs the room: it has a local member or joiner
	confirmed   bool // Redis's last word on the room was "subscribe"
	inFlight    bool // a command for the room awaits its reply
	resubscribe bool // our last command was SUBSCRIBE: go-redis resubscribes it after a reconnect
	interrupted bool // was confirmed when the connection was lost: next confirmation resumes
}

func newSubscriber(client redis.UniversalClient, keys keyspace, activity *roomActivity, events subscriptionEvents, cfg *config, log *slog.Logger, stats *counters) *subscriber {
	return &subscriber{
		redis: client, keys: keys, activity: activity, events: events, log: log, stats: stats,
		confirmTimeout: cfg.subscribeTimeout,
		keyTimeout:     cfg.publishTimeout,
		pingEvery:      cfg.redisPing,
		rooms:          make(map[string]*subState),
		dirty:          make(map[string]struct{}),
		wake:           make(chan struct{}, 1),
		psReady:        make(chan struct{}),
		stop:           func() {},
	}
}

// start runs the subscriber's two goroutines until close.
func (s *subscriber) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	s.wg.Go(func() { s.reconcileLoop(ctx) })
	s.wg.Go(func() { s.receive(ctx) })
}

// close ends the subscription connection (Redis drops its subscriptions)
// and waits for the goroutines. Closing the connection also wakes the
// reader from a pending read.
func (s *subscriber) close() {
	s.stop()
	s.psMu.Lock()
	s.psClosed = true
	if s.ps != nil {
		if err := s.ps.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
			s.log.Debug("closing the subscription connection", "err", err)
		}
	}
	s.psMu.Unlock()
	s.wg.Wait()
}

// acquire records that room has a local member or joiner. It reports
// whether the subscription is already confirmed (the joiner can be told at
// once); otherwise the owner hears roomSubscribed when it is.
func (s *subscriber) acquire(room string) (confirmed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.rooms[room]
	if st == nil {
		st = &subState{}
		s.rooms[room] = st
	}
	st.want = true
	if st.confirmed && !st.inFlight {
		return true
	}
	s.markDirtyLocked(room)
	return false
}

// release records that room has no local member any more.
func (s *subscriber) release(room string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.rooms[room]; st != nil {
		st.want = false
		s.markDirtyLocked(room)
	}
}

func (s *subscriber) markDirtyLocked(room string) {
	s.dirty[room] = struct{}{}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// reconcileLoop brings Redis in line with the rooms wanted, one batch of
// SUBSCRIBE and one of UNSUBSCRIBE per wake-up.
func (s *subscriber) reconcileLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		s.reconcile(ctx)
	}
}

// reconcile sends what the rooms marked dirty need. psMu is held only for
// the commands: never across the room keys' round trip on the pub client,
// which could otherwise hold up the reader's replacement of a silent
// connection. A replacement that slips in between resubscribes the rooms
// itself; the extra SUBSCRIBE or UNSUBSCRIBE then only earns a redundant
// confirmation.
func (s *subscriber) reconcile(ctx context.Context) {
	var toSubscribe, toUnsubscribe []string
	s.mu.Lock()
	for room := range s.dirty {
		st := s.rooms[room]
		switch {
		case st == nil || st.inFlight:
			continue // the reply will mark the room dirty again if need be
		case st.want && !st.confirmed:
			st.inFlight, st.resubscribe = true, true
			toSubscribe = append(toSubscribe, room)
		case !st.want && st.confirmed:
			st.inFlight, st.resubscribe = true, false
			toUnsubscribe = append(toUnsubscribe, room)
		case !st.want && !st.confirmed:
			delete(s.rooms, room)
		}
		delete(s.dirty, room)
	}
	s.mu.Unlock()

	if len(toSubscribe) > 0 {
		// The key first, so that a room is active once a joiner hears "joined".
		tctx, cancel := context.WithTimeout(ctx, s.keyTimeout)
		if err := s.activity.touch(tctx, toSubscribe...); err != nil {
			s.stats.redisErrors.Add(1)
			s.log.Warn("cannot set room activity keys", "rooms", len(toSubscribe), "err", err)
		}
		cancel()
	}
	var subErr, unsubErr error
	s.psMu.Lock()
	if len(toSubscribe) > 0 {
		s.log.Debug("subscribing", "rooms", toSubscribe)
		subErr = s.subscribeLocked(ctx, toSubscribe)
	}
	if len(toUnsubscribe) > 0 {
		s.log.Debug("unsubscribing", "rooms", toUnsubscribe)
		unsubErr = s.unsubscribeLocked(ctx, toUnsubscribe)
	}
	s.psMu.Unlock()

	if ctx.Err() != nil {
		return // closing: the connection's end drops every subscription
	}
	if subErr != nil {
		s.stats.redisErrors.Add(1)
		s.log.Warn("subscribe failed", "rooms", toSubscribe, "err", subErr)
		s.commandFailed(toSubscribe)
		for _, room := range toSubscribe {
			s.events.roomSubscribeFailed(room)
		}
	}
	if unsubErr != nil {
		// go-redis forgets the channels anyway, so they are not
		// resubscribed when the connection comes back.
		s.stats.redisErrors.Add(1)
		s.log.Warn("unsubscribe failed", "rooms", toUnsubscribe, "err", unsubErr)
		s.commandFailed(toUnsubscribe)
	}
}

// subscribeLocked sends SUBSCRIBE for rooms and waits for nothing: the
// reader sees the confirmations. Called with psMu held.
func (s *subscriber) subscribeLocked(ctx context.Context, rooms []string) error {
	if s.psClosed {
		return redis.ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, s.confirmTimeout)
	defer cancel()
	if s.ps == nil {
		// Created with its first channels, never empty: an empty PubSub on
		// some client kinds (Ring) panics, and on a Cluster it would pin a
		// random node. Its errors surface in the reader; the join timeout
		// covers them.
		s.ps = s.redis.Subscribe(ctx, s.channels(rooms)...)
		close(s.psReady)
		return nil
	}
	return s.ps.Subscribe(ctx, s.channels(rooms)...)
}

// unsubscribeLocked sends UNSUBSCRIBE for rooms. Called with psMu held.
func (s *subscriber) unsubscribeLocked(ctx context.Context, rooms []string) error {
	if s.psClosed || s.ps == nil {
		return redis.ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, s.confirmTimeout)
	defer cancel()
	return s.ps.Unsubscribe(ctx, s.channels(rooms)...)
}

func (s *subscriber) channels(rooms []string) []string {
	channels := make([]string, len(rooms))
	for i, room := range rooms {
		channels[i] = s.keys.channel(room)
	}
	return channels
}

// commandFailed: no reply will come for rooms' commands.
func (s *subscriber) commandFailed(rooms []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, room := range rooms {
		if st := s.rooms[room]; st != nil {
			st.inFlight = false
			st.confirmed = false
			// go-redis keeps a channel it failed to subscribe and subscribes
			// it on reconnect; an unsubscribed one it forgets.
		}
	}
}

// confirm applies Redis's reply to a SUBSCRIBE or UNSUBSCRIBE.
func (s *subscriber) confirm(m *redis.Subscription) {
	room, ok := s.keys.roomOf(m.Channel)
	if !ok {
		return
	}
	s.mu.Lock()
	st := s.rooms[room]
	if st == nil {
		st = &subState{}
		s.rooms[room] = st
	}
	st.inFlight = false
	switch m.Kind {
	case "subscribe":
		st.confirmed = true
		resumed := st.interrupted
		st.interrupted = false
		if !st.want {
			s.markDirtyLocked(room) // unwanted meanwhile: unsubscribe
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		if resumed {
			s.log.Info("resubscribed after a lost connection; members told they may have missed messages", "room", room)
		}
		s.events.roomSubscribed(room, resumed)
	case "unsubscribe":
		st.confirmed = false
		s.markDirtyLocked(room) // wanted again meanwhile, or to forget
		s.mu.Unlock()
	default:
		s.mu.Unlock()
	}
}

// connectionLost resets every room's state after the subscription
// connection failed: no reply is coming for the commands sent on it. A new
// confirmation comes for the rooms go-redis resubscribes by itself (replaced
// false: those whose last command was SUBSCRIBE), or for every wanted room
// when the subscriber made a new PubSub (replaced true, the rooms returned).
// Other wanted rooms are left to reconcile. The caller reports
// subscriptionsLost once it holds no lock.
func (s *subscriber) connectionLost(replaced bool) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var wanted []string
	for room, st := range s.rooms {
		if st.confirmed {
			st.interrupted = true
		}
		st.confirmed = false
		if replaced {
			st.resubscribe = st.want
		}
		st.inFlight = st.resubscribe
		switch {
		case st.want && st.resubscribe:
			wanted = append(wanted, room)
		case st.want:
			s.markDirtyLocked(room)
		case !st.inFlight:
			delete(s.rooms, room)
		}
	}
	return wanted
}
