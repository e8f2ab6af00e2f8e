package chat

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// hub is the instance's local view: which of its clients are in which room,
// and who waits to join. It fans out relayed messages and never blocks on a
// client: client.send only queues. It knows nothing of Redis: its methods
// report when a room appears or empties, and the Handler keeps the
// subscriber in line with that.
type hub struct {
	maxRooms int
	// history: Redis keeps the rooms' last messages, so a gap fill can
	// check that the members' last one is still there (subscribed).
	history bool
	// presence hears, under mu, when a user's first client here enters a
	// room and when its last one goes (lock order: hub.mu, then presence's).
	presence func(room, user string, here bool)

	mu      sync.RWMutex
	rooms   map[string]*room
	waiters int // clients waiting for a confirmation, over all rooms
}

// A join goes through three steps. A client waits (waiting) until Redis
// confirms the room's subscription; then it catches up (catching): from
// that moment it misses no live message, which the hub keeps for it while
// the Handler reads the room's position, and the history asked for, from
// Redis; then it becomes a member, is told "joined" with that position and
// those messages, and gets the kept messages that came after it, and every
// one after those: its sequence has no gap and no duplicate.
type room struct {
	// members have been told "joined" and receive the room's messages.
	members []*client
	// waiting clients asked to join before Redis confirmed the
	// subscription; they catch up when it does.
	waiting map[*client]waiter
	// catching clients wait for their read of Redis (finishJoin).
	catching map[*client]*catchUp
	// subscribed: Redis confirmed the subscription and it has not been lost
	// since, so a new member can catch up at once.
	subscribed bool

	// The room's position here: its epoch, as the last join's read found
	// it, and the seq of the last message relayed to members.
	epoch string
	last  atomic.Int64
	// lastFrame is the message at seq last, when it came live (deliver);
	// nil when last was set otherwise. A mutex, not an atomic pointer:
	// storing a slice there would cost an allocation per message.
	lastMu    sync.Mutex
	lastFrame []byte
	// refill holds the members' messages back after a lost subscription
	// while the Handler reads what was missed (finishRefill).
	refill *gate
	// users counts each user's clients here, for presence.
	users map[string]int
}

// setLast records seq as the last message relayed here, and frame as that
// message if it is known (nil otherwise).
func (r *room) setLast(seq int64, frame []byte) {
	r.lastMu.Lock()
	r.last.Store(seq)
	r.lastFrame = frame
	r.lastMu.Unlock()
}

// lastMessage returns the last seq relayed here, and its message if known.
func (r *room) lastMessage() (int64, []byte) {
	r.lastMu.Lock()
	defer r.lastMu.Unlock()
	return r.last.Load(), r.lastFrame
}

// waiter is a join waiting for Redis's confirmation: the ref of the join
// frame, for an "unavailable" error if it does not come in time.
type waiter struct {
	ref   string
	since time.Time
	want  joinWant
}

func newHub(maxRooms int, history bool) *hub {
	return &hub{maxRooms: maxRooms, history: history, rooms: make(map[string]*room)}
}

// join puts c in name: catching up at once if the room is subscribed
// (catching: the Handler must read Redis for it), waiting otherwise.
// created: the room had no local member or joiner before, so it needs a
// subscription. Joining a room again starts a fresh catch-up: the client
// asked for a position again.
func (h *hub) join(c *client, name, ref string, want joinWant) (created, catching bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if joined, in := c.rooms[name]; in {
		if !joined { // its "joined" is on its way
			return false, false
		}
		r := h.rooms[name]
		h.removeMemberLocked(r, c)
		delete(r.catching, c)
		c.rooms[name] = false
		if !r.subscribed { // lost meanwhile: wait for the confirmation again
			r.waiting[c] = waiter{ref: ref, since: time.Now(), want: want}
			h.waiters++
			return false, false
		}
		r.catching[c] = &catchUp{ref: ref, want: want}
		return false, true
	}
	if len(c.rooms) >= h.maxRooms {
		c.sendError(codeTooManyRooms, "at most "+strconv.Itoa(h.maxRooms)+" rooms per connection", ref)
		return false, false
	}
	r := h.rooms[name]
	if r == nil {
		r = &room{waiting: make(map[*client]waiter), catching: make(map[*client]*catchUp)}
		h.rooms[name] = r
		created = true
	}
	c.rooms[name] = false
	h.arrivedLocked(r, name, c)
	if r.subscribed {
		r.catching[c] = &catchUp{ref: ref, want: want}
		return created, true
	}
	r.waiting[c] = waiter{ref: ref, since: time.Now(), want: want}
	h.waiters++
	return created, false
}

// kick takes every local client of user out of name, telling each so, and
// reports whether that left the room empty.
func (h *hub) kick(name, user string) (emptied bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil {
		return false
	}
	var out []*client
	for _, c := range r.members {
		if c.user == user {
			out = append(out, c)
		}
	}
	for c := range r.catching {
		if c.user == user {
			out = append(out, c)
		}
	}
	for c := range r.waiting {
		if c.user == user {
			out = append(out, c)
		}
	}
	for _, c := range out {
		if h.removeLocked(c, name) {
			emptied = true
		}
		c.send(kickedFrame(name))
	}
	return emptied
}

// wouldAdd reports whether a join of name would add c to it: c is not in
// it yet and is in fewer than maxRooms rooms.
func (h *hub) wouldAdd(c *client, name string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	_, in := c.rooms[name]
	return !in && len(c.rooms) < h.maxRooms
}

// leave takes c out of name. emptied: nobody local is left in the room.
func (h *hub) leave(c *client, name, ref string) (emptied bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, in := c.rooms[name]; !in {
		c.sendError(codeNotJoined, "not in room "+name, ref)
		return false
	}
	emptied = h.removeLocked(c, name)
	c.send(leftFrame(name))
	return emptied
}

func (h *hub) isJoined(c *client, name string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return c.rooms[name]
}

// removeClient takes a departing client out of all its rooms and returns
// the rooms it leaves empty.
func (h *hub) removeClient(c *client) (emptied []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name := range c.rooms {
		if h.removeLocked(c, name) {
			emptied = append(emptied, name)
		}
	}
	return emptied
}

// removeLocked takes c out of name and reports whether the room emptied
// (and was forgotten).
func (h *hub) removeLocked(c *client, name string) bool {
	_, in := c.rooms[name]
	delete(c.rooms, name)
	r := h.rooms[name]
	if r == nil {
		return false
	}
	if in {
		h.departedLocked(r, name, c)
	}
	if _, ok := r.waiting[c]; ok {
		delete(r.waiting, c)
		h.waiters--
	}
	delete(r.catching, c)
	h.removeMemberLocked(r, c)
	return h.forgetIfEmptyLocked(name, r)
}

func (h *hub) removeMemberLocked(r *room, c *client) {
	for i, m := range r.members {
		if m == c {
			last := len(r.members) - 1
			r.members[i] = r.members[last]
			r.members[last] = nil
			r.members = r.members[:last]
			return
		}
	}
}

func (h *hub) forgetIfEmptyLocked(name string, r *room) bool {
	if len(r.members) == 0 && len(r.waiting) == 0 && len(r.catching) == 0 {
		delete(h.rooms, name)
		return true
	}
	return false
}

// deliver hands one relayed message frame to every local member of name and
// returns how many there were. The same bytes go to every member: a message
// is never encoded per client.
func (h *hub) deliver(name string, frame []byte) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	r := h.rooms[name]
	if r == nil {
		return 0
	}
	seq := seqOf(frame)
	delivered := 0
	if seq > 0 {
		r.setLast(seq, frame)
	}
	if r.refill != nil {
		// Held for everyone told "joined" until the gap is filled.
		sent, past := r.refill.take(frame, seq, r.refillBudget(), r.relay)
		if sent {
			delivered = len(r.members)
		}
		if past {
			h.mu.RUnlock()
			h.settle(name, nil, true)
			h.mu.RLock()
		}
		return delivered
	}
	for _, c := range r.members {
		c.send(frame)
	}
	delivered = len(r.members)
	var settled []*client
	for c, cu := range r.catching {
		sent, pastFloor := cu.take(frame, seq, c.h.cfg.sendQueue, c.send)
		if sent {
			delivered++
		}
		if pastFloor {
			settled = append(settled, c)
		}
	}
	if len(settled) > 0 {
		h.mu.RUnlock()
		h.settle(name, settled, false)
		h.mu.RLock()
	}
	return delivered
}

// subscribed: Redis confirmed the subscription to name. Waiting clients
// catch up: it returns them, for the Handler to read Redis for each. After
// a lost connection (resumed), the existing members learn that messages
// may have been missed.
func (h *hub) subscribed(name string, resumed bool) []pendingRead {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil {
		return nil
	}
	r.subscribed = true
	var reads []pendingRead
	if resumed && r.refill == nil && r.hasJoined() {
		if r.epoch != "" {
			// Fill the gap from the history before anything live.
			r.refill = &gate{}
			want := joinWant{since: &position{Epoch: r.epoch, Seq: ptr(r.last.Load())}}
			if seq, frame := r.lastMessage(); h.history && frame != nil && seq == *want.since.Seq {
				want.last = frame
			}
			reads = append(reads, pendingRead{want: want})
		} else {
			r.sendJoined(joinedFrame(name, true))
		}
	}
	for c, w := range r.waiting {
		r.catching[c] = &catchUp{ref: w.ref, want: w.want}
		reads = append(reads, pendingRead{c, w.want})
	}
	h.waiters -= len(r.waiting)
	clear(r.waiting)
	return reads
}

// subscriptionFailed: the subscription to name cannot be made. The clients
// waiting for it are told at once. emptied: nobody local is left in it.
func (h *hub) subscriptionFailed(name string) (emptied bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.rooms[name]; r != nil {
		return h.failWaitersLocked(name, r, time.Time{})
	}
	return false
}

// hasWaiters reports whether some client waits for a subscription.
func (h *hub) hasWaiters() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.waiters > 0
}

// expireWaiters fails the joins that have waited since before cutoff and
// returns the rooms that leaves empty.
func (h *hub) expireWaiters(cutoff time.Time) (emptied []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, r := range h.rooms {
		if len(r.waiting) > 0 && h.failWaitersLocked(name, r, cutoff) {
			emptied = append(emptied, name)
		}
	}
	return emptied
}

// failWaitersLocked answers "unavailable" to the clients waiting for name
// since before cutoff (all of them for a zero cutoff), and forgets the room
// if nobody is left in it (emptied).
func (h *hub) failWaitersLocked(name string, r *room, cutoff time.Time) (emptied bool) {
	for c, w := range r.waiting {
		if !cutoff.IsZero() && w.since.After(cutoff) {
			continue
		}
		delete(r.waiting, c)
		h.waiters--
		delete(c.rooms, name)
		h.departedLocked(r, name, c)
		c.sendError(codeUnavailable, "cannot join "+name+": Redis did not confirm the subscription", w.ref)
	}
	return h.forgetIfEmptyLocked(name, r)
}

// subscriptionsLost: the connection carrying rooms failed, or they moved
// to another Redis node. Until Redis confirms each room again, a new member
// must wait for that confirmation.
func (h *hub) subscriptionsLost(rooms []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, name := range rooms {
		if r := h.rooms[name]; r != nil {
			r.subscribed = false
		}
	}
}

// arrivedLocked counts c in room name's users here; the user's first
// client makes the user present.
func (h *hub) arrivedLocked(r *room, name string, c *client) {
	if r.users == nil {
		r.users = make(map[string]int)
	}
	if r.users[c.user]++; r.users[c.user] == 1 && h.presence != nil {
		h.presence(name, c.user, true)
	}
}

// departedLocked uncounts c; the user's last client makes it absent.
func (h *hub) departedLocked(r *room, name string, c *client) {
	if r.users[c.user]--; r.users[c.user] <= 0 {
		delete(r.users, c.user)
		if h.presence != nil {
			h.presence(name, c.user, false)
		}
	}
}

// localUsers returns, for each room, its users with a client here.
func (h *hub) localUsers() map[string][]string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	rooms := make(map[string][]string, len(h.rooms))
	for name, r := range h.rooms {
		for user := range r.users {
			rooms[name] = append(rooms[name], user)
		}
	}
	return rooms
}

// roomCount is how many rooms have local members or joiners.
func (h *hub) roomCount() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.rooms)
}

// roomNames lists the rooms with local members or joiners.
func (h *hub) roomNames() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	names := make([]string, 0, len(h.rooms))
	for name := range h.rooms {
		names = append(names, name)
	}
	return names
}
