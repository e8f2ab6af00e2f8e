package chat

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chatrelay/chat/internal/proxytest"
	"github.com/chatrelay/chat/internal/wstest"
	"github.com/redis/go-redis/v9"
)

// noticesUntil reads c's frames until the message text marker arrives and
// returns the presence notices seen meanwhile, as "user_joined alice",
// but for those about self (c's own user_joined comes when it will).
func noticesUntil(t *testing.T, c *wstest.Conn, self, marker string) []string {
	t.Helper()
	var notices []string
	for {
		f, err := c.ReadJSON(wait)
		must(t, err)
		switch {
		case (f["type"] == "user_joined" || f["type"] == "user_left") && f["user"] != self:
			notices = append(notices, fmt.Sprint(f["type"], " ", f["user"]))
		case f["type"] == "message" && f["text"] == marker:
			return notices
		}
	}
}

// A user is present once however many connections and instances it has:
// the others hear user_joined at its first connection and user_left after
// its last, and presence (frame and Handler.Presence) lists it once.
func TestPresenceAcrossInstances(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		a, b, c := newInstance(t, be), newInstance(t, be), newInstance(t, be)
		bob := c.connect(t, "user=bob&room=p")
		bob.Presence = true
		say := func(text string) { must(t, bob.SendJSON(msgFrame("p", text, ""))) }

		rc := be.client(t)
		// field waits until an instance's presence field for alice has
		// come (or gone): the script that wrote it published any notice in
		// the same step, so a marker said after it arrives after that too.
		field := func(in *instance, want bool) {
			eventually(t, wait, "alice's presence field on "+in.h.InstanceID(), func() bool {
				has, _ := rc.HExists(context.Background(), "chat:presence:{p}", "alice\x00"+in.h.InstanceID()).Result()
				return has == want
			})
		}
		alice1 := a.connect(t, "user=alice&room=p")
		for f := bob.Next(t, "user_joined", wait); f["user"] != "alice"; f = bob.Next(t, "user_joined", wait) {
		}
		alice2 := b.connect(t, "user=alice&room=p")
		field(b, true)
		say("m2")
		if got := noticesUntil(t, bob, "bob", "m2"); len(got) != 0 {
			t.Fatalf("after alice's second connection: %v, want nothing", got)
		}
		must(t, bob.SendJSON(map[string]any{"type": "presence", "room": "p", "ref": "who"}))
		if f := bob.Next(t, "presence", wait); fmt.Sprint(f["users"]) != "[alice bob]" || f["ref"] != "who" {
			t.Fatalf("presence: %v, want alice and bob once each, with the ref", f)
		}
		if users, err := a.h.Presence(context.Background(), "p"); err != nil || !slices.Equal(users, []string{"alice", "bob"}) {
			t.Fatalf("Handler.Presence = %v, %v", users, err)
		}

		alice1.Close()
		field(a, false)
		say("m3")
		if got := noticesUntil(t, bob, "bob", "m3"); len(got) != 0 {
			t.Fatalf("after alice's first connection closed: %v, want nothing", got)
		}
		alice2.Close()
		for f := bob.Next(t, "user_left", wait); f["user"] != "alice"; f = bob.Next(t, "user_left", wait) {
		}
		if users, _ := c.h.Presence(context.Background(), "p"); !slices.Equal(users, []string{"bob"}) {
			t.Fatalf("Handler.Presence = %v, want bob", users)
		}

		// Nobody left: the room's presence key goes.
		bob.Close()
		eventually(t, wait, "the presence key removed", func() bool {
			n, _ := be.client(t).Exists(context.Background(), "chat:presence:{p}").Result()
			return n == 0
		})
	})
}

// An instance that dies without a goodbye (here: its every connection to
// Redis frozen, so it neither leaves nor refreshes) takes its users with it
// within the presence TTL: another instance's refresh sweeps them out and
// announces them left.
func TestPresenceOfADeadInstance(t *testing.T) {
	be := realRedis(t)
	short := func(c *config) { c.presenceTTL = time.Second }
	pubProxy, subProxy := proxytest.Start(t, be.addr), proxytest.Start(t, be.addr)
	via := func(p *proxytest.Proxy) *redis.Client {
		rc := redis.NewClient(&redis.Options{Addr: p.Addr})
		t.Cleanup(func() { _ = rc.Close() })
		return rc
	}
	doomed := newInstanceWith(t, via(pubProxy), via(subProxy), short)
	alive := newInstance(t, be, short)
	bob := alive.connect(t, "user=bob&room=d")
	bob.Presence = true
	doomed.connect(t, "user=carol&room=d")
	for f := bob.Next(t, "user_joined", wait); f["user"] != "carol"; f = bob.Next(t, "user_joined", wait) {
	}

	pubProxy.Freeze()
	subProxy.Freeze()
	died := time.Now()
	t.Cleanup(func() { pubProxy.Unfreeze(); subProxy.Unfreeze() }) // let it shut down
	if f := bob.Next(t, "user_left", 10*time.Second); f["user"] != "carol" {
		t.Fatalf("%v, want user_left carol", f)
	}
	t.Logf("carol announced left %v after her instance froze (presence TTL 1 s)", time.Since(died).Round(time.Millisecond))
	if users, _ := alive.h.Presence(context.Background(), "d"); !slices.Equal(users, []string{"bob"}) {
		t.Fatalf("Handler.Presence = %v, want bob alone", users)
	}
}

// presence is for joined rooms; a malformed one is a bad request.
func TestPresenceBadRequests(t *testing.T) {
	in := newInstance(t, miniBackend(t))
	c := in.connect(t, "user=ann&room=here")
	must(t, c.SendJSON(map[string]any{"type": "presence", "room": "elsewhere", "ref": "p1"}))
	if e := c.Next(t, "error", wait); e["code"] != codeNotJoined || e["ref"] != "p1" {
		t.Errorf("presence of a room not joined: %v, want not_joined with the ref", e)
	}
	must(t, c.SendJSON(map[string]any{"type": "presence", "ref": "p2"}))
	if e := c.Next(t, "error", wait); e["code"] != codeBadRequest || e["ref"] != "p2" {
		t.Errorf("presence without a room: %v, want bad_request with the ref", e)
	}
}

// Shutdown takes the instance's users out of presence before it returns:
// the others hear user_left now, not when the fields lapse. (The leaves of
// the clients Shutdown closes are queued as it stops the presence worker;
// each round gives that race another chance.)
func TestShutdownLeavesPresence(t *testing.T) {
	be := miniBackend(t)
	for round := range 10 {
		in := newInstance(t, be)
		c := in.connect(t, "user=ann&room=bye")
		field := "ann\x00" + in.h.InstanceID()
		eventually(t, wait, "ann present", func() bool {
			return be.client(t).HExists(context.Background(), "chat:presence:{bye}", field).Val()
		})
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		must(t, in.h.Shutdown(ctx))
		cancel()
		if be.client(t).HExists(context.Background(), "chat:presence:{bye}", field).Val() {
			t.Fatalf("round %d: ann still present after Shutdown", round)
		}
	}
}
