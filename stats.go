package chat

import "sync/atomic"

// Stats is a snapshot of a Handler's counters, for monitoring. Counts are
// since New; Connections and Rooms are the values now. Every field only
// grows except those two, so a scraper can compute rates from differences.
type Stats struct {
	Connections         int    // WebSocket connections open now
	Rooms               int    // rooms with a member or a pending join on this instance now
	ConnectionsAccepted uint64 // WebSocket upgrades served
	ConnectionsRefused  uint64 // upgrades refused with HTTP 503: WithMaxConnections reached

	MessagesPublished uint64 // messages Redis accepted from this instance (clients' and Publish's)
	Deliveries        uint64 // message frames queued for local members

	Dropped Drops // what was refused or given up, by reason

	RedisErrors            uint64 // failed Redis commands: publishes, subscriptions, activity keys
	SubscriptionReconnects uint64 // a subscription connection was lost or replaced
	GapFills               uint64 // rooms whose members were given, from the history, what a lost subscription missed, or told it could not be
}

// Drops counts, by reason, the frames and connections a Handler refused or
// gave up on. Each is also visible to the client concerned (an error frame
// or a close code); these totals are the operator's view.
type Drops struct {
	SlowClients uint64 // connections closed with 1013: their send queue was full
	RateLimited uint64 // frames answered rate_limited
	BadFrames   uint64 // frames answered bad_request, invalid_room, not_joined, too_large or too_many_rooms
	Unavailable uint64 // messages and joins answered unavailable because Redis failed or did not confirm in time
	Forbidden   uint64 // joins and messages an application hook refused (WithAuthorize, WithOnMessage)
}

// counters are the live values behind Stats, updated without locks.
type counters struct {
	connectionsAccepted    atomic.Uint64
	connectionsRefused     atomic.Uint64
	messagesPublished      atomic.Uint64
	deliveries             atomic.Uint64
	slowClients            atomic.Uint64
	rateLimited            atomic.Uint64
	badFrames              atomic.Uint64
	unavailable            atomic.Uint64
	forbidden              atomic.Uint64
	redisErrors            atomic.Uint64
	subscriptionReconnects atomic.Uint64
	gapFills               atomic.Uint64
}

// Stats returns the Handler's counters. It is cheap: safe to call on every
// scrape of a metrics endpoint.
func (h *Handler) Stats() Stats {
	h.mu.Lock()
	conns := len(h.clients)
	h.mu.Unlock()
	c := &h.stats
	return Stats{
		Connections:         conns,
		Rooms:               h.hub.roomCount(),
		ConnectionsAccepted: c.connectionsAccepted.Load(),
		ConnectionsRefused:  c.connectionsRefused.Load(),
		MessagesPublished:   c.messagesPublished.Load(),
		Deliveries:          c.deliveries.Load(),
		Dropped: Drops{
			SlowClients: c.slowClients.Load(),
			RateLimited: c.rateLimited.Load(),
			BadFrames:   c.badFrames.Load(),
			Unavailable: c.unavailable.Load(),
			Forbidden:   c.forbidden.Load(),
		},
		RedisErrors:            c.redisErrors.Load(),
		SubscriptionReconnects: c.subscriptionReconnects.Load(),
		GapFills:               c.gapFills.Load(),
	}
}
