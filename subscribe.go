package chat

import (
	"context"
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
	// subscriptionsLost: the connection carrying rooms failed or was
	// replaced, or they moved to another node; until each room is confirmed
	// again (roomSubscribed), messages may be missed.
	subscriptionsLost(rooms []string)
}

// subscriber keeps the instance's subscription connections subscribed to
// exactly the rooms its owner wants (acquire, release). Its goroutines:
// reconcile sends SUBSCRIBE and UNSUBSCRIBE as rooms gain their first or
// lose their last local member, and each link (link.go) has one reader
// (receive.go). With a Redis Cluster client, rooms are subscribed with
// sharded Pub/Sub on the masters that own their slots, one link per master;
// otherwise one classic link carries every room.
//
// go-redis's Subscribe returns before Redis confirms, and a confirmation is
// the only proof that messages will arrive, so the subscriber tracks each
// room's subscription itself (subState) and reports the confirmation.
type subscriber struct {
	cluster *redis.ClusterClient // sharded Pub/Sub: the sub client; nil for classic
	keys    keyspace
	events  subscriptionEvents
	log     *slog.Logger
	stats   *counters

	confirmTimeout time.Duration // bound on sending a command
	pingEvery      time.Duration // liveness probe when a connection is idle

	mu      sync.Mutex
	rooms   map[string]*subState
	dirty   map[string]struct{} // rooms whose wanted state may differ from Redis's
	wake    chan struct{}       // wakes reconcile; buffered, 1
	classic *link               // the one link, for classic Pub/Sub; nil when sharded
	links   map[string]*link    // sharded: by master address
	toClose []*link             // dropped links, closed by unlock
	closed  bool                // close ran: no new link

	// Sharded: rooms to place again once retryDelay has passed, because
	// their node refused them, failed, or gave their slot away.
	retry      map[string]struct{}
	retryDelay time.Duration
	stale      bool // a room moved or its master failed: reload the cluster's slot map before placing rooms
	// Redis refused SSUBSCRIBE as unknown (Redis 6), which was logged.
	toldUnsupported bool

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// subState is one room's subscription as the subscriber knows it. At most
// one command per room is unanswered at a time (inFlight), so every reply
// can be matched to the command it answers and a stale "unsubscribe" can
// never be taken for a fresh "subscribe".
type subState struct {
	want        bool   // the owner needs the room: it has a local member or joiner
	confirmed   bool   // Redis's last word on the room was "subscribe"
	inFlight    bool   // a command for the room awaits its reply
	resubscribe bool   // our last command was SUBSCRIBE: go-redis resubscribes it after a reconnect
	interrupted bool   // was confirmed when its connection was lost: next confirmation resumes
	link        *link  // the connection its last command went on; nil: none
	movedTo     string // sharded: the master a MOVED reply named, for its next placement
}

const (
	// Placing a room costs a dial at most, so during a failover the
	// subscriber looks often: members hear again soon after it.
	minRetryDelay = 50 * time.Millisecond
	maxRetryDelay = 250 * time.Millisecond
)

func newSubscriber(client redis.UniversalClient, sharded bool, keys keyspace, events subscriptionEvents, cfg *config, log *slog.Logger, stats *counters) *subscriber {
	s := &subscriber{
		keys: keys, events: events, log: log, stats: stats,
		confirmTimeout: cfg.subscribeTimeout,
		pingEvery:      cfg.redisPing,
		rooms:          make(map[string]*subState),
		dirty:          make(map[string]struct{}),
		wake:           make(chan struct{}, 1),
		links:          make(map[string]*link),
		retry:          make(map[string]struct{}),
		stop:           func() {},
	}
	if sharded {
		s.cluster = client.(*redis.ClusterClient)
	} else {
		s.classic = newLink("", client)
	}
	return s
}

// start runs the subscriber's goroutines until close.
func (s *subscriber) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	s.wg.Go(func() { s.reconcileLoop(ctx) })
	if s.classic != nil {
		s.startLink(s.classic)
	}
}

// close ends every subscription connection (Redis drops their
// subscriptions) and waits for the goroutines.
func (s *subscriber) close() {
	s.stop()
	s.mu.Lock()
	s.closed = true
	for _, l := range s.links {
		s.dropLinkLocked(l)
	}
	if s.classic != nil {
		s.toClose = append(s.toClose, s.classic)
	}
	s.unlock()
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
// commands per wake-up, and places the rooms waiting for a retry once their
// delay is up.
func (s *subscriber) reconcileLoop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	retrying := false
	for {
		select {
		case <-ctx.Done():
			retry.Stop()
			return
		case <-s.wake:
		case <-retry.C:
			retrying = false
			s.mu.Lock()
			for room := range s.retry {
				s.dirty[room] = struct{}{}
			}
			clear(s.retry)
			s.retryDelay = min(2*s.retryDelay, maxRetryDelay)
			s.mu.Unlock()
		}
		s.reconcile(ctx)
		s.mu.Lock()
		if len(s.retry) > 0 && !retrying {
			retrying = true
			retry.Reset(s.retryDelay)
		}
		s.mu.Unlock()
	}
}

// reconcile sends what the rooms marked dirty need. A link's psMu is held
// only for its commands: never across a round trip, which could otherwise
// hold up the reader's replacement of a silent connection. A replacement
// that slips in between resubscribes the rooms itself; the extra SUBSCRIBE
// or UNSUBSCRIBE then only earns a redundant confirmation. (The room's keys
// are not written here: the read that every join and gap fill makes
// ensures them, in the same script.)
func (s *subscriber) reconcile(ctx context.Context) {
	var toSubscribe []string
	toUnsubscribe := make(map[*link][]string)
	movedTo := make(map[string]string) // room → the master a MOVED named
	s.mu.Lock()
	for room := range s.dirty {
		st := s.rooms[room]
		switch {
		case st == nil || st.inFlight:
			continue // the reply will mark the room dirty again if need be
		case st.want && !st.confirmed:
			st.inFlight, st.resubscribe = true, true
			toSubscribe = append(toSubscribe, room)
			if st.movedTo != "" {
				movedTo[room], st.movedTo = st.movedTo, ""
			}
		case !st.want && st.confirmed:
			st.inFlight, st.resubscribe = true, false
			toUnsubscribe[st.link] = append(toUnsubscribe[st.link], room)
		case !st.want && !st.confirmed:
			s.setLinkLocked(st, nil)
			delete(s.rooms, room)
		}
		delete(s.dirty, room)
	}
	stale := s.stale && len(toSubscribe) > 0
	if stale {
		s.stale = false
	}
	s.unlock()

	for l, rooms := range s.place(ctx, toSubscribe, movedTo, stale) {
		var err error
		if l == nil {
			err = errNoLink
		} else {
			s.log.Debug("subscribing", "rooms", rooms, "node", l.node)
			err = s.send(ctx, l, rooms, true)
		}
		if err != nil && ctx.Err() == nil {
			s.stats.redisErrors.Add(1)
			s.logRetry("subscribe failed", "rooms", rooms, "err", err)
			s.commandFailed(rooms)
			for _, room := range rooms {
				s.events.roomSubscribeFailed(room)
			}
		}
	}
	for l, rooms := range toUnsubscribe {
		s.log.Debug("unsubscribing", "rooms", rooms, "node", l.node)
		if err := s.send(ctx, l, rooms, false); err != nil && ctx.Err() == nil {
			// go-redis forgets the channels anyway, so they are not
			// resubscribed when the connection comes back.
			s.stats.redisErrors.Add(1)
			s.log.Warn("unsubscribe failed", "rooms", rooms, "err", err)
			s.commandFailed(rooms)
		}
	}
}

// place finds each room's link (linkFor) and records it; rooms that have
// none (the cluster cannot be asked) come back under nil. With stale, the
// cluster's slot map is read again first; a room a MOVED sent elsewhere
// goes to the master it named, if that is one.
func (s *subscriber) place(ctx context.Context, rooms []string, movedTo map[string]string, stale bool) map[*link][]string {
	var masters map[string]*redis.Client
	if s.cluster != nil && (stale || len(movedTo) > 0) && len(rooms) > 0 {
		masters = s.reloadMasters(ctx)
	}
	placed := make(map[*link][]string)
	for _, room := range rooms {
		l, err := s.linkFor(ctx, room, masters[movedTo[room]])
		if err != nil {
			s.log.Warn("cannot find the room's node", "room", room, "err", err)
			l = nil
		}
		placed[l] = append(placed[l], room)
	}
	s.mu.Lock()
	for l, rooms := range placed {
		for _, room := range rooms {
			if st := s.rooms[room]; st != nil && l != nil {
				s.setLinkLocked(st, l)
			}
		}
	}
	s.unlock()
	return placed
}

// send sends SUBSCRIBE (subscribe true) or UNSUBSCRIBE for rooms on l,
// bounded by the confirm timeout, and waits for no reply.
func (s *subscriber) send(ctx context.Context, l *link, rooms []string, subscribe bool) error {
	ctx, cancel := context.WithTimeout(ctx, s.confirmTimeout)
	defer cancel()
	l.psMu.Lock()
	defer l.psMu.Unlock()
	if l.shard {
		// Recorded before the write: the reply may be read before it returns.
		s.mu.Lock()
		for _, room := range rooms {
			l.pending = append(l.pending, command{room, subscribe})
		}
		s.mu.Unlock()
	}
	var err error
	if subscribe {
		err = l.subscribe(ctx, s.channels(rooms))
	} else {
		err = l.unsubscribe(ctx, s.channels(rooms))
	}
	if err != nil && l.shard {
		// The link's connection failed: linkLost follows.
		s.mu.Lock()
		for _, room := range rooms {
			l.answered(room, subscribe)
		}
		s.mu.Unlock()
	}
	return err
}

func (s *subscriber) channels(rooms []string) []string {
	channels := make([]string, len(rooms))
	for i, room := range rooms {
		channels[i] = s.keys.channel(room)
	}
	return channels
}

// commandFailed: no reply will come for rooms' commands. go-redis keeps a
// classic channel it failed to subscribe and subscribes it on reconnect; an
// unsubscribed one it forgets. A sharded room is placed again later.
func (s *subscriber) commandFailed(rooms []string) {
	s.mu.Lock()
	defer s.unlock()
	for _, room := range rooms {
		st := s.rooms[room]
		if st == nil {
			continue
		}
		st.inFlight = false
		st.confirmed = false
		switch {
		case !st.want:
			s.setLinkLocked(st, nil)
			delete(s.rooms, room)
		case s.cluster != nil:
			s.unplaceLocked(room, st, false) // its master may be gone
		}
	}
}

// confirm applies Redis's reply, read on l, to a SUBSCRIBE or UNSUBSCRIBE,
// and a sunsubscribe that Redis pushed by itself because the room's slot
// moved.
func (s *subscriber) confirm(l *link, m *redis.Subscription) {
	room, ok := s.keys.roomOf(m.Channel)
	if !ok {
		return
	}
	s.mu.Lock()
	st := s.rooms[room]
	switch m.Kind {
	case "subscribe", "ssubscribe":
		l.answered(room, true)
		if st == nil {
			// Subscribed but forgotten meanwhile: unsubscribe it.
			st = &subState{}
			s.rooms[room] = st
			s.setLinkLocked(st, l)
		} else if st.link != l {
			// A late answer from a node the room has left; that node
			// owns it no more, so nothing will come from there.
			s.unlock()
			return
		}
		st.inFlight = false
		st.confirmed = true
		s.retryDelay = 0
		resumed := st.interrupted
		st.interrupted = false
		if !st.want {
			s.markDirtyLocked(room) // unwanted meanwhile: unsubscribe
			s.unlock()
			return
		}
		s.unlock()
		if resumed {
			s.log.Info("resubscribed; members told they may have missed messages, the gap filled from the history where there is one", "room", room)
		}
		s.events.roomSubscribed(room, resumed)
	case "unsubscribe", "sunsubscribe":
		requested := s.cluster == nil || l.answered(room, false)
		switch {
		case st == nil || st.link != l:
			s.unlock()
		case !requested && st.confirmed:
			s.roomMoved(room, st)
			s.unlock()
			s.events.subscriptionsLost([]string{room})
		default:
			st.inFlight = false
			st.confirmed = false
			s.markDirtyLocked(room) // wanted again meanwhile, or to forget
			s.unlock()
		}
	default:
		s.unlock()
	}
}

// connectionLost resets the state of l's rooms after the classic
// connection failed: no reply is coming for the commands sent on it. A new
// confirmation comes for the rooms go-redis resubscribes by itself, those
// whose last command was SUBSCRIBE; other wanted rooms are left to
// reconcile. It returns the rooms affected, for the caller to report with
// subscriptionsLost once it holds no lock.
func (s *subscriber) connectionLost(l *link) (lost []string) {
	s.mu.Lock()
	defer s.unlock()
	for room, st := range s.rooms {
		if st.link != l && st.link != nil {
			continue
		}
		lost = append(lost, room)
		if st.confirmed {
			st.interrupted = true
		}
		st.confirmed = false
		st.inFlight = st.resubscribe
		switch {
		case st.want && !st.resubscribe:
			s.markDirtyLocked(room)
		case !st.want && !st.inFlight:
			s.setLinkLocked(st, nil)
			delete(s.rooms, room)
		}
	}
	return lost
}
