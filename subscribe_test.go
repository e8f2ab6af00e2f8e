package chat

import "testing"

// When the subscription connection breaks, a room expects a confirmation only
// if go-redis will resubscribe it by itself (our last command for it was
// SUBSCRIBE). A room wanted but not yet sent must go back to subscribeLoop,
// or its joiners would wait for a reply that never comes.
func TestConnectionLostExpectsOnlyResubscribedRooms(t *testing.T) {
	b := newSubscriber(nil, false, keyspace("chat:"), nil, &config{}, testLogger(t), &counters{})
	b.rooms["sent"] = &subState{want: true, confirmed: true, resubscribe: true}
	b.rooms["unsent"] = &subState{want: true}
	b.rooms["leaving"] = &subState{confirmed: true, inFlight: true} // UNSUBSCRIBE in flight
	b.connectionLost(b.classic)

	if s := b.rooms["sent"]; !s.inFlight || s.confirmed || !s.interrupted {
		t.Errorf("sent: %+v, want awaiting go-redis's resubscription, interrupted", *s)
	}
	if s := b.rooms["unsent"]; s.inFlight {
		t.Errorf("unsent: %+v, want left to reconcile", *s)
	}
	if _, dirty := b.dirty["unsent"]; !dirty {
		t.Error("unsent room not queued for reconcile")
	}
	if _, kept := b.rooms["leaving"]; kept {
		t.Error("a room being unsubscribed is still tracked after the connection it was on died")
	}
}
