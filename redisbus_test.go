package chat

import "testing"

// When the subscription connection breaks, a room expects a confirmation only
// if go-redis will resubscribe it by itself (our last command for it was
// SUBSCRIBE). A room wanted but not yet sent must go back to subscribeLoop,
// or its joiners would wait for a reply that never comes.
func TestConnectionLostExpectsOnlyResubscribedRooms(t *testing.T) {
	b := newRedisBus(nil, nil, keyspace("chat:"), newHub(32), nil, &config{}, testLogger(t))
	b.subs["sent"] = &subState{want: true, confirmed: true, resubscribe: true}
	b.subs["unsent"] = &subState{want: true}
	b.subs["leaving"] = &subState{confirmed: true, inFlight: true} // UNSUBSCRIBE in flight
	b.connectionLost(false)

	if s := b.subs["sent"]; !s.inFlight || s.confirmed || !s.interrupted {
		t.Errorf("sent: %+v, want awaiting go-redis's resubscription, interrupted", *s)
	}
	if s := b.subs["unsent"]; s.inFlight {
		t.Errorf("unsent: %+v, want left to subscribeLoop", *s)
	}
	if _, dirty := b.dirty["unsent"]; !dirty {
		t.Error("unsent room not queued for subscribeLoop")
	}
	if _, kept := b.subs["leaving"]; kept {
		t.Error("a room being unsubscribed is still tracked after the connection it was on died")
	}
}
