package chat

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// A link is one subscription connection and the goroutine that reads it
// (receive.go). With classic Pub/Sub the subscriber has one link, for every
// room: any node of a deployment delivers every channel. With sharded
// Pub/Sub (a Redis Cluster) a channel is delivered only by the master that
// owns its slot, so the subscriber keeps one link per master that owns a
// slot of one of its rooms, and closes a link once it carries no room.
//
// A link's commands are serialised by psMu, which also guards its
// replacement by a handover. psMu comes before subscriber.mu.
type link struct {
	node   string                // the master's address (sharded); "" for the classic link
	shard  bool                  // sharded Pub/Sub: SSUBSCRIBE, one channel per command
	client redis.UniversalClient // where its PubSubs come from: the sub client, or the master's node client
	stop   context.CancelFunc    // ends its reader

	psMu   sync.Mutex
	ps     *redis.PubSub // nil until the classic link's first subscription
	ready  chan struct{} // closed when ps is first set
	closed bool          // close ran: no new PubSub

	// Guarded by subscriber.mu.
	rooms   int       // rooms whose subState.link is this link
	pending []command // sharded: commands awaiting their reply on ps, oldest first
	dropped bool      // taken out of subscriber.links
}

// A command is an SSUBSCRIBE (subscribe) or SUNSUBSCRIBE of one room's
// channel. Redis answers a sharded link's commands in order, and an error
// reply (MOVED, CLUSTERDOWN) does not name its channel: the oldest command
// still waiting is the one it answers.
type command struct {
	room      string
	subscribe bool
}

// answered removes the oldest command for room of the given kind and
// reports whether there was one. Called with subscriber.mu held.
func (l *link) answered(room string, subscribe bool) bool {
	i := slices.Index(l.pending, command{room, subscribe})
	if i >= 0 {
		l.pending = slices.Delete(l.pending, i, i+1)
	}
	return i >= 0
}

// errNoLink: the room's node could not be found (the cluster did not
// answer).
var errNoLink = errors.New("no subscription connection")

// newLink makes the classic link (node "") or the sharded link to the
// master at node.
func newLink(node string, client redis.UniversalClient) *link {
	return &link{node: node, shard: node != "", client: client, ready: make(chan struct{}), stop: func() {}}
}

// close ends the link's connection (Redis drops its subscriptions) and its
// reader. Closing the connection also wakes the reader from a pending read.
func (l *link) close() error {
	l.stop()
	l.psMu.Lock()
	defer l.psMu.Unlock()
	l.closed = true
	if l.ps == nil {
		return nil
	}
	if err := l.ps.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return err
	}
	return nil
}

// newPubSub opens a new connection subscribed to channels. Called with
// psMu held.
//
// A classic PubSub is created with its first channels, never empty: an
// empty PubSub on some client kinds (Ring) panics, and on a Cluster it would
// pin a random node. A sharded link's client is a single node's, where an
// empty PubSub is fine; each SSUBSCRIBE names one channel, because one
// command may not span slots, and go-redis's own resubscription after a
// reconnect would name them all at once (CROSSSLOT), so a sharded link is
// never reconnected: it is replaced (see linkLost).
func (l *link) newPubSub(ctx context.Context, channels []string) (*redis.PubSub, error) {
	if !l.shard {
		return l.client.Subscribe(ctx, channels...), nil
	}
	ps := l.client.SSubscribe(ctx)
	for _, ch := range channels {
		if err := ps.SSubscribe(ctx, ch); err != nil {
			return ps, err
		}
	}
	return ps, nil
}

// subscribe sends SUBSCRIBE (SSUBSCRIBE) for channels and waits for no
// reply: the reader sees the confirmations. Called with psMu held.
func (l *link) subscribe(ctx context.Context, channels []string) error {
	switch {
	case l.closed:
		return redis.ErrClosed
	case l.ps == nil:
		ps, err := l.newPubSub(ctx, channels)
		l.ps = ps
		close(l.ready)
		return err
	case !l.shard:
		return l.ps.Subscribe(ctx, channels...)
	}
	for _, ch := range channels {
		if err := l.ps.SSubscribe(ctx, ch); err != nil {
			return err
		}
	}
	return nil
}

// unsubscribe sends UNSUBSCRIBE (SUNSUBSCRIBE) for channels. Called with
// psMu held.
func (l *link) unsubscribe(ctx context.Context, channels []string) error {
	switch {
	case l.closed || l.ps == nil:
		return redis.ErrClosed
	case l.shard:
		for _, ch := range channels { // one slot per command
			if err := l.ps.SUnsubscribe(ctx, ch); err != nil {
				return err
			}
		}
		return nil
	}
	return l.ps.Unsubscribe(ctx, channels...)
}

// linkFor returns the link room must be subscribed on: the classic link,
// or, in sharded mode, the link to node if given, else to the master that
// owns the room's slot as the cluster client last saw it, created if need
// be. A stale view is corrected by the master's MOVED reply or pushed
// sunsubscribe.
func (s *subscriber) linkFor(ctx context.Context, room string, node *redis.Client) (*link, error) {
	if s.cluster == nil {
		return s.classic, nil
	}
	if node == nil {
		var err error
		if node, err = s.cluster.MasterForKey(ctx, s.keys.channel(room)); err != nil {
			return nil, err
		}
	}
	addr := node.Options().Addr
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, redis.ErrClosed
	}
	if l := s.links[addr]; l != nil {
		return l, nil
	}
	l := newLink(addr, node)
	l.ps = node.SSubscribe(ctx) // no channel: no connection yet
	close(l.ready)
	s.links[addr] = l
	s.startLink(l)
	s.log.Debug("opening a sharded subscription connection", "node", addr)
	return l, nil
}

// startLink runs l's reader until l closes; the subscriber's close closes
// every link.
func (s *subscriber) startLink(l *link) {
	ctx, cancel := context.WithCancel(context.Background())
	l.stop = cancel
	s.wg.Go(func() { s.receive(ctx, l) })
}

// setLinkLocked moves st onto l (nil: none), keeping the links' room
// counts; a sharded link left carrying nothing is dropped, to be closed by
// unlock.
func (s *subscriber) setLinkLocked(st *subState, l *link) {
	if st.link == l {
		return
	}
	if old := st.link; old != nil {
		old.rooms--
		if old.rooms == 0 && old != s.classic {
			s.dropLinkLocked(old)
		}
	}
	st.link = l
	if l != nil {
		l.rooms++
	}
}

// dropLinkLocked takes l out of use; unlock closes it.
func (s *subscriber) dropLinkLocked(l *link) {
	if l.dropped {
		return
	}
	l.dropped = true
	if s.links[l.node] == l {
		delete(s.links, l.node)
	}
	s.toClose = append(s.toClose, l)
}

// unlock releases s.mu, then closes the links dropped meanwhile: closing
// takes a link's psMu, which comes before s.mu.
func (s *subscriber) unlock() {
	drop, closing := s.toClose, s.closed
	s.toClose = nil
	s.mu.Unlock()
	for _, l := range drop {
		if !closing {
			s.log.Debug("closing a sharded subscription connection: its node carries none of this instance's rooms now", "node", l.node)
		}
		if err := l.close(); err != nil {
			s.log.Debug("closing a subscription connection", "node", l.node, "err", err)
		}
	}
}

// linkLost handles a sharded link whose connection failed: its node may be
// gone (a failover) or no longer own the rooms. Its rooms are placed again
// after a fresh look at the cluster, and confirmed as resumed. Called on
// l's reader, which returns next.
func (s *subscriber) linkLost(l *link, err error) {
	s.stats.subscriptionReconnects.Add(1)
	s.logRetry("sharded subscription connection lost: subscribing its rooms again where the cluster now places them", "node", l.node, "err", err)
	var lost []string
	s.mu.Lock()
	for room, st := range s.rooms {
		if st.link != l {
			continue
		}
		lost = append(lost, room)
		s.unplaceLocked(room, st, false)
	}
	s.dropLinkLocked(l)
	s.unlock()
	s.events.subscriptionsLost(lost)
}

// roomMoved handles a sunsubscribe that the subscriber did not ask for:
// the room's slot moved to another master (resharding) or its node stopped
// being a master (failover). The room is placed again at once.
func (s *subscriber) roomMoved(room string, st *subState) {
	s.log.Info("room's slot moved: subscribing it on its new owner", "room", room, "node", st.link.node)
	s.unplaceLocked(room, st, true)
}

// unplaceLocked forgets where st was subscribed; a wanted room is placed
// again, after a fresh look at the cluster: at once (now), or after
// retryDelay when its node failed. Its next confirmation resumes it.
func (s *subscriber) unplaceLocked(room string, st *subState, now bool) {
	if st.confirmed {
		st.interrupted = true
	}
	st.confirmed, st.inFlight = false, false
	s.setLinkLocked(st, nil)
	s.stale = true
	switch {
	case !st.want:
		delete(s.rooms, room)
	case now:
		s.markDirtyLocked(room)
	default:
		s.retryLocked(room)
	}
}

// rejected handles an error reply on a sharded link: the answer to the
// oldest command awaiting one (MOVED after a stale view of the cluster,
// CLUSTERDOWN during a failover). A refused SSUBSCRIBE is placed again:
// at once on the master a MOVED names, later otherwise. A refused
// SUNSUBSCRIBE leaves nothing subscribed on this node.
func (s *subscriber) rejected(l *link, err error) {
	s.mu.Lock()
	if len(l.pending) == 0 {
		s.unlock()
		s.log.Warn("unexpected error on a sharded subscription connection", "node", l.node, "err", err)
		return
	}
	cmd := l.pending[0]
	l.pending = l.pending[1:]
	unsupported := strings.Contains(err.Error(), "unknown command")
	switch {
	case unsupported && !s.toldUnsupported:
		s.toldUnsupported = true
		s.log.Error("this Redis has no sharded Pub/Sub (Redis 7 has): joins fail; use chat.WithClassicPubSub with this cluster", "node", l.node, "err", err)
	case !unsupported:
		s.log.Info("Redis refused a subscription command: placing the room again", "room", cmd.room, "node", l.node, "err", err)
	}
	st := s.rooms[cmd.room]
	movedTo, moved := redis.IsMovedError(err)
	switch {
	case st == nil || st.link != l || !st.inFlight:
	case cmd.subscribe:
		s.unplaceLocked(cmd.room, st, moved)
		st.movedTo = movedTo
	default:
		st.inFlight, st.confirmed = false, false
		s.setLinkLocked(st, nil)
		s.markDirtyLocked(cmd.room) // wanted again meanwhile, or to forget
	}
	s.unlock()
	if unsupported && cmd.subscribe {
		s.events.roomSubscribeFailed(cmd.room) // its joiners need not wait
	}
}

// retryLocked places room again after retryDelay, which grows while
// placements fail and is reset by a confirmation.
func (s *subscriber) retryLocked(room string) {
	s.retry[room] = struct{}{}
	if s.retryDelay == 0 {
		s.retryDelay = minRetryDelay
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// closeDropped closes the links dropped by callers that could not: those
// holding a link's psMu.
func (s *subscriber) closeDropped() {
	s.mu.Lock()
	s.unlock()
}

// logRetry logs a failure that the subscriber will retry: as a warning the
// first time, at debug level while retrying, so that a master that is down
// for a while does not flood the log.
func (s *subscriber) logRetry(msg string, args ...any) {
	s.mu.Lock()
	first := s.retryDelay <= minRetryDelay
	s.mu.Unlock()
	if first {
		s.log.Warn(msg, args...)
	} else {
		s.log.Debug(msg, args...)
	}
}

// reloadMasters reads the cluster's slot map now (go-redis's ReloadState
// only schedules a read) and returns its masters by address. A failure
// leaves the old view, which a MOVED reply corrects.
func (s *subscriber) reloadMasters(ctx context.Context) map[string]*redis.Client {
	ctx, cancel := context.WithTimeout(ctx, s.confirmTimeout)
	defer cancel()
	var mu sync.Mutex
	masters := make(map[string]*redis.Client)
	err := s.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		masters[c.Options().Addr] = c
		return nil
	})
	if err != nil {
		s.log.Debug("cannot read the cluster's slot map", "err", err)
	}
	return masters
}
