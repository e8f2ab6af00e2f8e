package chat

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// receive is the only reader of link l's connection. It hands messages to
// the owner, applies confirmations, and watches the connection: a ping
// when idle, and a handover to a new connection when nothing at all came
// back for staleAfter, because a silently frozen connection raises no
// error (see handover, below).
//
// A broken classic connection is left to go-redis, which reconnects on the
// next read and resubscribes every channel. A broken sharded one ends the
// link (linkLost): its node may be gone, and go-redis's resubscription
// would not work there.
func (s *subscriber) receive(ctx context.Context, l *link) {
	select { // nothing to read until the first subscription
	case <-ctx.Done():
		return
	case <-l.ready:
	}
	l.psMu.Lock()
	ps := l.ps
	l.psMu.Unlock()

	staleAfter := 4 * s.pingEvery
	lastFrame := time.Now()
	var lastPing time.Time
	var backoff time.Duration
	down := false
	var ho *handover // a replacement in progress
	for ctx.Err() == nil {
		timeout := s.pingEvery
		if ho != nil {
			ho.poll(ctx, s, l, ps)
			if ho.finished {
				ho = nil
			} else {
				timeout = handoverPoll
			}
		}
		msg, err := ps.ReceiveTimeout(ctx, timeout)
		if err != nil {
			var reply redis.Error
			switch {
			case ctx.Err() != nil:
				return // drain, if running, stops too
			case isTimeout(err):
				if time.Since(lastFrame) < staleAfter || ho != nil {
					if time.Since(lastPing) >= s.pingEvery {
						_ = ps.Ping(ctx) // a write error shows up in the next receive
						lastPing = time.Now()
					}
					continue
				}
				s.log.Warn("Redis subscription connection silent: opening a new one, reading the old one until the new one is confirmed", "node", l.node, "silent_for", time.Since(lastFrame).Round(time.Millisecond))
				s.stats.subscriptionReconnects.Add(1)
				ho, ps = s.handOver(ctx, l, ps)
				lastFrame = time.Now()
				continue
			case l.shard && errors.As(err, &reply):
				lastFrame = time.Now()
				s.rejected(l, err)
				continue
			case l.shard:
				s.linkLost(l, err)
				return
			}
			// The connection broke. go-redis reconnects on the next
			// receive and resubscribes every channel it has.
			if !down {
				down = true
				s.stats.subscriptionReconnects.Add(1)
				s.log.Warn("Redis subscription connection lost; messages published until it is back are lost", "err", err)
			}
			s.events.subscriptionsLost(s.connectionLost(l))
			backoff = min(max(2*backoff, 50*time.Millisecond), time.Second)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			continue
		}
		lastFrame = time.Now()
		backoff = 0
		if down {
			down = false
			s.log.Info("Redis subscription connection back")
		}
		switch m := msg.(type) {
		case *redis.Message:
			if ho != nil && ho.holds(m) {
				continue
			}
			if room, ok := s.keys.roomOf(m.Channel); ok {
				s.events.roomMessage(room, []byte(m.Payload))
			}
		case *redis.Subscription:
			if ho != nil {
				ho.confirmed(ctx, s, m)
			}
			s.confirm(l, m)
		case *redis.Pong:
			if ho != nil {
				ho.pong(m)
			}
		}
	}
}

// A silent subscription connection is not necessarily a dead one: a Redis
// that stalls (a slow command, a fork, a paused VM) answers nothing for
// seconds, then runs what it queued, publishes included. Closing the silent
// connection would lose those messages, so the subscriber replaces it
// make-before-break:
//
//  1. A new connection subscribes to every wanted room, while the old one
//     stays subscribed and is read by its own goroutine (drain), which
//     delivers what arrives there. What the new one receives meanwhile is
//     held back.
//  2. Once the new connection has confirmed every room, a PING with a
//     marker goes to the old one. Redis answers it after every message it
//     published before the new subscriptions, which only the old connection
//     carries; drain stops at the answer and closes the old connection.
//  3. The held messages follow, without those drain delivered already
//     (compared by payload, which is unique per message). A second marker,
//     on the new connection, ends the comparison: what comes after it was
//     published after drain stopped.
//
// If the old connection fails, or has not answered its marker markerGrace
// after the new one was confirmed (a dead path rather than a stalled
// Redis), messages may be missing, and the members are told "resumed".
type handover struct {
	old      *redis.PubSub
	marker   string
	awaiting map[string]bool // rooms subscribed on the new connection, unconfirmed
	markedAt atomic.Int64    // Unix ns when the marker went to the old connection; 0 before
	done     chan struct{}   // closed when drain has finished with the old connection

	// Written by drain before done is closed, read by the reader after.
	delivered map[string]struct{} // payloads drain delivered
	lost      bool                // the old connection ended without its marker

	// The reader's own.
	held        []*redis.Message // from the new connection, while drain runs
	drained     bool
	newMarkedAt time.Time // when the second marker went to the new connection
	finished    bool      // its answer came: nothing more to compare
}

const (
	handoverPoll = 50 * time.Millisecond // how often the reader checks on drain
	markerGrace  = time.Second           // see handover
)

var handovers atomic.Uint64 // numbers the markers

// handOver starts replacing l's silent connection old and returns the new
// one, already asked to subscribe to every wanted room of l.
func (s *subscriber) handOver(ctx context.Context, l *link, old *redis.PubSub) (*handover, *redis.PubSub) {
	ho := &handover{
		old:       old,
		marker:    "chat-handover-" + strconv.FormatUint(handovers.Add(1), 10),
		awaiting:  make(map[string]bool),
		done:      make(chan struct{}),
		delivered: make(map[string]struct{}),
	}
	s.wg.Go(func() { s.drain(ctx, ho) })

	defer s.closeDropped() // l, if it carries no room any more
	l.psMu.Lock()
	defer l.psMu.Unlock()
	if l.closed {
		return ho, l.ps
	}
	wanted := s.resubscribeAll(l)
	for _, room := range wanted {
		ho.awaiting[room] = true
	}
	l.ps, _ = l.newPubSub(ctx, s.channels(wanted)) // an error shows up in the next receive
	if len(wanted) == 0 {
		ho.mark(ctx)
	}
	return ho, l.ps
}

// resubscribeAll prepares the state of l's rooms for a new connection that
// subscribes to the wanted ones, which it returns. A room stays confirmed:
// the old connection still delivers it. The others are forgotten; the old
// connection's end unsubscribes them. Called with l.psMu held, so a link
// this leaves empty is closed later, by closeDropped.
func (s *subscriber) resubscribeAll(l *link) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var wanted []string
	for room, st := range s.rooms {
		if st.link != l {
			continue
		}
		if !st.want {
			s.setLinkLocked(st, nil)
			delete(s.rooms, room)
			continue
		}
		st.inFlight, st.resubscribe = true, true
		wanted = append(wanted, room)
	}
	if l.shard {
		l.pending = l.pending[:0] // the old connection's replies go unread
		for _, room := range wanted {
			l.pending = append(l.pending, command{room, true})
		}
	}
	return wanted
}

// drain reads the old connection until its marker comes back, delivering
// its messages.
func (s *subscriber) drain(ctx context.Context, ho *handover) {
	defer close(ho.done)
	defer ho.old.Close()
	for ctx.Err() == nil {
		msg, err := ho.old.ReceiveTimeout(ctx, handoverPoll)
		if err != nil {
			if !isTimeout(err) {
				ho.lost = ctx.Err() == nil
				return
			}
			if at := ho.markedAt.Load(); at != 0 && time.Since(time.Unix(0, at)) > markerGrace {
				ho.lost = true
				return
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Message:
			if room, ok := s.keys.roomOf(m.Channel); ok {
				ho.delivered[m.Payload] = struct{}{}
				s.events.roomMessage(room, []byte(m.Payload))
			}
		case *redis.Pong:
			if m.Payload == ho.marker {
				return
			}
		}
	}
}

// mark sends the marker to the old connection.
func (ho *handover) mark(ctx context.Context) {
	if ho.markedAt.Load() == 0 {
		_ = ho.old.Ping(ctx, ho.marker) // if it fails, so does drain's next read
		ho.markedAt.Store(time.Now().UnixNano())
	}
}

// confirmed notes a confirmation on the new connection; the last one
// awaited sends the marker.
func (ho *handover) confirmed(ctx context.Context, s *subscriber, m *redis.Subscription) {
	if room, ok := s.keys.roomOf(m.Channel); ok && (m.Kind == "subscribe" || m.Kind == "ssubscribe") {
		delete(ho.awaiting, room)
	}
	if len(ho.awaiting) == 0 {
		ho.mark(ctx)
	}
}

// holds reports whether m, read on the new connection, must not be
// delivered now: held back while drain runs, or delivered by it already.
func (ho *handover) holds(m *redis.Message) bool {
	if !ho.drained {
		ho.held = append(ho.held, m)
		return true
	}
	_, dup := ho.delivered[m.Payload]
	return dup
}

// poll runs on the reader between reads: once drain is done it delivers
// the held messages and sends the second marker on ps, the new connection.
func (ho *handover) poll(ctx context.Context, s *subscriber, l *link, ps *redis.PubSub) {
	if ho.drained {
		if time.Since(ho.newMarkedAt) > 4*s.pingEvery {
			ho.finished = true // the marker was lost with a broken connection
		}
		return
	}
	select {
	case <-ho.done:
	default:
		return
	}
	ho.drained = true
	if ho.lost {
		s.log.Warn("the silent subscription connection did not catch up: members told they may have missed messages")
		s.resumeAll(l)
	} else {
		s.log.Info("subscription connection replaced; nothing lost", "delivered_by_old", len(ho.delivered), "held", len(ho.held))
	}
	for _, m := range ho.held {
		if _, dup := ho.delivered[m.Payload]; !dup {
			if room, ok := s.keys.roomOf(m.Channel); ok {
				s.events.roomMessage(room, []byte(m.Payload))
			}
		}
	}
	ho.held = nil
	_ = ps.Ping(ctx, ho.marker+"-new")
	ho.newMarkedAt = time.Now()
}

// pong notes a PING's answer on the new connection.
func (ho *handover) pong(m *redis.Pong) {
	if ho.drained && m.Payload == ho.marker+"-new" {
		ho.finished = true
	}
}

// resumeAll tells the owner that every wanted room of l may have missed
// messages: at once for those the new connection confirmed, at their
// confirmation for the others.
func (s *subscriber) resumeAll(l *link) {
	var now []string
	s.mu.Lock()
	for room, st := range s.rooms {
		switch {
		case st.link != l || !st.want:
		case st.confirmed && !st.inFlight:
			now = append(now, room)
		default:
			st.interrupted = true
		}
	}
	s.mu.Unlock()
	for _, room := range now {
		s.events.roomSubscribed(room, true)
	}
}
