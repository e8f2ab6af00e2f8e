package chat

import (
	"sync"
)

// Joins catching up, and gaps being filled. A join's "joined" and a gap
// fill after a lost subscription both need a read of Redis (history.go)
// while the room's live messages keep coming; a gate holds those messages
// back for the client, or for the room's members, until the read is done,
// and then lets through only what comes after the position it found.

// gate holds a stream of a room's messages back while a read of Redis is on
// its way, and then lets through only those after the position the read
// found (floor). The instance may not have relayed every message up to
// floor when the read returns (Redis published them; they are on their
// way), so until a live message past floor arrives, those at or below it
// are not passed on again. A frame with no seq (published by something
// other than the publish script) always goes on.
type gate struct {
	mu       sync.Mutex // deliver works under hub.mu's read lock
	open     bool       // the read is done: pass what comes after floor
	floor    int64
	kept     [][]byte
	size     int  // bytes kept, held to the send-queue budget
	overflow bool // too much came before the read did
}

// take keeps frame while the gate is closed, and passes it to send once it
// is open (see pass).
func (g *gate) take(frame []byte, seq int64, budget int, send func([]byte)) (sent, pastFloor bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open {
		return g.pass(frame, seq, send)
	}
	if g.overflow {
		return false, false
	}
	if g.size += len(frame); g.size > budget {
		g.overflow, g.kept = true, nil
		return false, false
	}
	g.kept = append(g.kept, frame)
	return false, false
}

// openAt opens the gate at floor and passes the kept frames after it; it
// returns the seq of the last one passed (floor if none) and whether the
// live messages have caught up. Called with hub.mu locked.
func (g *gate) openAt(floor int64, send func([]byte)) (last int64, pastFloor bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open, g.floor = true, floor
	last = floor
	for _, f := range g.kept {
		seq := seqOf(f)
		if _, past := g.pass(f, seq, send); past {
			last, pastFloor = seq, true
		}
	}
	g.kept = nil
	return last, pastFloor
}

// pass sends frame unless floor covers it, and reports whether it came
// after floor: the live messages have caught up.
func (g *gate) pass(frame []byte, seq int64, send func([]byte)) (sent, pastFloor bool) {
	if seq != 0 && seq <= g.floor {
		return false, false
	}
	send(frame)
	return true, seq > g.floor
}

func (g *gate) isOpen() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// catchUp is a join waiting for its read of Redis (see room).
type catchUp struct {
	ref  string
	want joinWant
	gate
}

// pendingRead is a client that needs its read of Redis to finish a join.
type pendingRead struct {
	c    *client
	want joinWant
}

// finishJoin tells c it joined name at the position its read found, unless
// it left meanwhile, and passes on the kept messages that come after that
// position, in order; c then takes live messages past it (see catchUp).
func (h *hub) finishJoin(c *client, name string, read joinRead) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil || r.catching[c] == nil {
		return
	}
	cu := r.catching[c]
	if cu.overflow {
		delete(r.catching, c)
		delete(c.rooms, name)
		h.departedLocked(r, name, c)
		c.sendError(codeUnavailable, "cannot join "+name+": too many messages came while its history was read; try again", cu.ref)
		return
	}
	c.rooms[name] = true
	r.epoch = read.at.epoch
	c.send(joinedAtFrame(name, read.at, read.messages, read.recovery))
	cu.openAt(read.at.seq, c.send)
}

// failJoin answers c's join of name "unavailable" (its read failed) and
// reports whether that left the room empty.
func (h *hub) failJoin(c *client, name string, err error) (emptied bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil || r.catching[c] == nil {
		return false
	}
	cu := r.catching[c]
	delete(r.catching, c)
	delete(c.rooms, name)
	h.departedLocked(r, name, c)
	c.sendError(codeUnavailable, "cannot join "+name+": "+err.Error(), cu.ref)
	return h.forgetIfEmptyLocked(name, r)
}

// settle makes the clients that caught up ordinary members of name, and
// ends a refill whose live messages have caught up.
func (h *hub) settle(name string, clients []*client, refilled bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil {
		return
	}
	for _, c := range clients {
		if cu := r.catching[c]; cu != nil && cu.open {
			delete(r.catching, c)
			r.members = append(r.members, c)
		}
	}
	if refilled && r.refill != nil && r.refill.open {
		r.refill = nil
	}
}

// finishRefill ends the gap after a lost subscription of name with what
// the read found: the members get the messages they missed, in order,
// before the live ones, and notice nothing else; or, when the gap cannot be
// filled (epoch changed, history trimmed or off), a "joined" that says so
// (resumed, recovered:false) with the room's new position.
func (h *hub) finishRefill(name string, read joinRead) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil || r.refill == nil || r.refill.open {
		return
	}
	if r.refill.overflow {
		h.endRefillLocked(name, r, 0)
		return
	}
	if read.recovery != nil && *read.recovery {
		for _, m := range read.messages {
			r.relay(m)
		}
	} else {
		r.epoch = read.at.epoch
		r.sendJoined(resumedFrame(name, read.at))
	}
	last, caughtUp := r.refill.openAt(read.at.seq, r.relay)
	r.setLast(last, nil)
	if caughtUp {
		r.refill = nil
	}
}

// failRefill ends the refill of name without the read: the members are
// told they may have missed messages, and get those held meanwhile.
func (h *hub) failRefill(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.rooms[name]; r != nil && r.refill != nil && !r.refill.open {
		h.endRefillLocked(name, r, 0)
	}
}

func (h *hub) endRefillLocked(name string, r *room, floor int64) {
	r.sendJoined(joinedFrame(name, true))
	if last, _ := r.refill.openAt(floor, r.relay); last > 0 {
		r.setLast(last, nil)
	}
	r.refill = nil
}

// relay queues a message frame held by a refill for every member, and
// hands it to every client catching up, whose gate keeps it or lets it
// through (see gate).
func (r *room) relay(frame []byte) {
	for _, c := range r.members {
		c.send(frame)
	}
	if len(r.catching) == 0 {
		return
	}
	seq := seqOf(frame)
	for c, cu := range r.catching {
		cu.take(frame, seq, c.h.cfg.sendQueue, c.send)
	}
}

// sendJoined queues a control frame for every client told "joined".
func (r *room) sendJoined(frame []byte) {
	for _, c := range r.members {
		c.send(frame)
	}
	for c, cu := range r.catching {
		if cu.isOpen() {
			c.send(frame)
		}
	}
}

// hasJoined reports whether some client here was told "joined".
func (r *room) hasJoined() bool {
	if len(r.members) > 0 {
		return true
	}
	for _, cu := range r.catching {
		if cu.isOpen() {
			return true
		}
	}
	return false
}

// refillBudget bounds what a refill holds: the send-queue budget, which
// every member has.
func (r *room) refillBudget() int {
	if len(r.members) == 0 {
		return 1 << 20
	}
	return r.members[0].h.cfg.sendQueue
}

func ptr[T any](v T) *T { return &v }
