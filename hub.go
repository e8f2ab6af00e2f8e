package chat

import (
	"strconv"
	"sync"
	"time"
)

// hub is the instance's local view: which of its clients are in which room.
// It tells the bus which rooms need a Redis subscription and fans out what
// the bus receives. It never blocks on a client: client.send only queues.
//
// Lock order: hub.mu, then redisBus.mu, then client.mu. The bus calls the
// hub without holding its own lock.
type hub struct {
	maxRooms int
	bus      interface {
		acquire(room string) (ready bool)
		release(room string)
	}

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

// join puts c in name, or queues it until the subscription is confirmed.
func (h *hub) join(c *client, name, ref string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if joined, in := c.rooms[name]; in {
		if joined { // joining twice is harmless; say so again
			c.send(joinedFrame(name, false))
		}
		return
	}
	if len(c.rooms) >= h.maxRooms {
		c.sendError(codeTooManyRooms, "at most "+strconv.Itoa(h.maxRooms)+" rooms per connection", ref)
		return
	}
	r := h.rooms[name]
	if r == nil {
		r = &room{waiting: make(map[*client]waiter)}
		h.rooms[name] = r
		r.subscribed = h.bus.acquire(name)
	}
	if r.subscribed {
		// Sent under the lock, so before any message fanned out after it.
		c.rooms[name] = true
		r.members = append(r.members, c)
		c.send(joinedFrame(name, false))
		return
	}
	c.rooms[name] = false
	r.waiting[c] = waiter{ref: ref, since: time.Now()}
	h.waiters++
}

func (h *hub) leave(c *client, name, ref string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, in := c.rooms[name]; !in {
		c.sendError(codeNotJoined, "not in room "+name, ref)
		return
	}
	h.removeLocked(c, name)
	c.send(leftFrame(name))
}

func (h *hub) isJoined(c *client, name string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return c.rooms[name]
}

// removeClient takes a departing client out of all its rooms.
func (h *hub) removeClient(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name := range c.rooms {
		h.removeLocked(c, name)
	}
}

func (h *hub) removeLocked(c *client, name string) {
	delete(c.rooms, name)
	r := h.rooms[name]
	if r == nil {
		return
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
	if len(r.members) == 0 && len(r.waiting) == 0 {
		delete(h.rooms, name)
		h.bus.release(name)
	}
}

// deliver hands one relayed message frame to every local member of name.
// The same bytes go to every member: a message is never encoded per client.
func (h *hub) deliver(name string, frame []byte) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if r := h.rooms[name]; r != nil {
		for _, c := range r.members {
			c.send(frame)
		}
	}
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

// subscriptionFailed: Redis refused the subscription to name. The clients
// waiting for it are told at once.
func (h *hub) subscriptionFailed(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.rooms[name]; r != nil {
		h.failWaitersLocked(name, r, time.Time{})
	}
}

// expireWaiters fails the joins that have waited longer than timeout.
func (h *hub) expireWaiters(now time.Time, timeout time.Duration) {
	h.mu.RLock()
	none := h.waiters == 0
	h.mu.RUnlock()
	if none {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, r := range h.rooms {
		if len(r.waiting) > 0 {
			h.failWaitersLocked(name, r, now.Add(-timeout))
		}
	}
}

// failWaitersLocked answers "unavailable" to the clients waiting for name
// since before cutoff (all of them for a zero cutoff), and drops the room
// if nobody is left in it.
func (h *hub) failWaitersLocked(name string, r *room, cutoff time.Time) {
	for c, w := range r.waiting {
		if !cutoff.IsZero() && w.since.After(cutoff) {
			continue
		}
		delete(r.waiting, c)
		h.waiters--
		delete(c.rooms, name)
		c.sendError(codeUnavailable, "cannot join "+name+": Redis did not confirm the subscription", w.ref)
	}
	if len(r.members) == 0 && len(r.waiting) == 0 {
		delete(h.rooms, name)
		h.bus.release(name)
	}
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
