package chat

import (
	"strconv"
	"sync"
	"time"
)

// hub is the instance's local view: which of its clients are in which room,
// and who waits to join. It fans out relayed messages and never blocks on a
// client: client.send only queues. It knows nothing of Redis: its methods
// report when a room appears or empties, and the Handler keeps the
// subscriber in line with that.
type hub struct {
	maxRooms int

	mu      sync.RWMutex
	rooms   map[string]*room
	waiters int // clients waiting for a confirmation, over all rooms
}

type room struct {
	// members have been told "joined" and receive the room's messages.
	members []*client
	// waiting clients asked to join; they become members, and are told
	// "joined", when Redis confirms the subscription.
	waiting map[*client]waiter
	// subscribed: Redis confirmed the subscription and it has not been lost
	// since, so a new member can be told "joined" at once.
	subscribed bool
}

// waiter is a join waiting for Redis: the ref of the join frame, for an
// "unavailable" error if the confirmation does not come in time.
type waiter struct {
	ref   string
	since time.Time
}

func newHub(maxRooms int) *hub {
	return &hub{maxRooms: maxRooms, rooms: make(map[string]*room)}
}

// join puts c in name if the room is subscribed, or queues it until
// subscribed says so. created: the room had no local member or joiner
// before, so it needs a subscription.
func (h *hub) join(c *client, name, ref string) (created bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if joined, in := c.rooms[name]; in {
		if joined { // joining twice is harmless; say so again
			c.send(joinedFrame(name, false))
		}
		return false
	}
	if len(c.rooms) >= h.maxRooms {
		c.sendError(codeTooManyRooms, "at most "+strconv.Itoa(h.maxRooms)+" rooms per connection", ref)
		return false
	}
	r := h.rooms[name]
	if r == nil {
		r = &room{waiting: make(map[*client]waiter)}
		h.rooms[name] = r
		created = true
	}
	if r.subscribed {
		// Sent under the lock, so before any message fanned out after it.
		c.rooms[name] = true
		r.members = append(r.members, c)
		c.send(joinedFrame(name, false))
		return created
	}
	c.rooms[name] = false
	r.waiting[c] = waiter{ref: ref, since: time.Now()}
	h.waiters++
	return created
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
	delete(c.rooms, name)
	r := h.rooms[name]
	if r == nil {
		return false
	}
	if _, ok := r.waiting[c]; ok {
		delete(r.waiting, c)
		h.waiters--
	}
	for i, m := range r.members {
		if m == c {
			last := len(r.members) - 1
			r.members[i] = r.members[last]
			r.members[last] = nil
			r.members = r.members[:last]
			break
		}
	}
	return h.forgetIfEmptyLocked(name, r)
}

func (h *hub) forgetIfEmptyLocked(name string, r *room) bool {
	if len(r.members) == 0 && len(r.waiting) == 0 {
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
	for _, c := range r.members {
		c.send(frame)
	}
	return len(r.members)
}

// subscribed: Redis confirmed the subscription to name. Waiting clients
// become members. After a lost connection (resumed), the existing members
// learn that messages may have been missed.
func (h *hub) subscribed(name string, resumed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil {
		return
	}
	r.subscribed = true
	if resumed && len(r.members) > 0 {
		frame := joinedFrame(name, true)
		for _, c := range r.members {
			c.send(frame)
		}
	}
	if len(r.waiting) > 0 {
		frame := joinedFrame(name, false)
		for c := range r.waiting {
			c.rooms[name] = true
			r.members = append(r.members, c)
			c.send(frame)
		}
		h.waiters -= len(r.waiting)
		clear(r.waiting)
	}
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
		c.sendError(codeUnavailable, "cannot join "+name+": Redis did not confirm the subscription", w.ref)
	}
	return h.forgetIfEmptyLocked(name, r)
}

// subscriptionsLost: the subscription connection failed. Until Redis
// confirms each room again, a new member must wait for that confirmation.
func (h *hub) subscriptionsLost() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.rooms {
		r.subscribed = false
	}
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
