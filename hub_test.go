package chat

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/chatrelay/chat/internal/wstest"
)

// "joined" means subscribed: a message published the moment a client is
// told "joined" always reaches it, for rooms that need a fresh SUBSCRIBE.
func TestJoinedMeansSubscribed(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be, WithRateLimit(0, 1))
		other := newInstance(t, be)
		c := wstest.MustDial(t, in.url+"?user=eve", nil)
		ctx := context.Background()
		for i := 0; i < 40; i++ {
			room := fmt.Sprintf("fresh-%d", i)
			must(t, c.SendJSON(map[string]any{"type": "join", "room": room}))
			c.Next(t, "joined", wait)
			must(t, other.h.Publish(ctx, room, "server", "first words"))
			if m := c.Next(t, "message", wait); m["room"] != room {
				t.Fatalf("got %v, want the message to %s", m, room)
			}
			must(t, c.SendJSON(map[string]any{"type": "leave", "room": room}))
			c.Next(t, "left", wait)
		}
	})
}

// Rooms are isolated; a client in two rooms gets both.
func TestRoomsAreIsolated(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		a, b := newInstance(t, be), newInstance(t, be)
		inA := a.connect(t, "room=a&user=ann")
		inB := b.connect(t, "room=b&user=ben")
		inBoth := b.connect(t, "room=a&room=b&user=bo")
		must(t, inA.SendJSON(msgFrame("a", "to a", "")))
		must(t, inB.SendJSON(msgFrame("b", "to b", "")))
		// Each single-room client's next message is its own room's; a
		// message leaking across rooms would arrive first or in between.
		if m := inA.Next(t, "message", wait); m["text"] != "to a" {
			t.Fatalf("client of a got %v", m)
		}
		if m := inB.Next(t, "message", wait); m["text"] != "to b" {
			t.Fatalf("client of b got %v", m)
		}
		got := map[string]bool{}
		for range 2 {
			got[str(inBoth.Next(t, "message", wait)["text"])] = true
		}
		if !got["to a"] || !got["to b"] {
			t.Fatalf("client of both got %v", got)
		}
		// Nothing else is queued for the single-room clients.
		must(t, a.h.Publish(context.Background(), "a", "server", "marker"))
		if m := inA.Next(t, "message", wait); m["text"] != "marker" {
			t.Fatalf("client of a got %v before the marker", m)
		}
	})
}

// The instance subscribes to a room while it has a local member and
// unsubscribes when the last one leaves or disconnects.
func TestSubscriptionFollowsMembers(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be)
		rdb := be.client(t)
		ctx := context.Background()
		channels := func() []string {
			chs, err := rdb.PubSubChannels(ctx, "chat:msg:*").Result()
			must(t, err)
			slices.Sort(chs)
			return chs
		}
		c1 := in.connect(t, "room=x&user=one")
		c2 := in.connect(t, "room=x&room=y&user=two")
		if got := channels(); !slices.Equal(got, []string{"chat:msg:{x}", "chat:msg:{y}"}) {
			t.Fatalf("subscribed channels = %v", got)
		}
		must(t, c2.SendJSON(map[string]any{"type": "leave", "room": "y", "ref": "l1"}))
		if f := c2.Next(t, "left", wait); f["room"] != "y" {
			t.Fatalf("left frame = %v", f)
		}
		eventually(t, wait, "y still subscribed after its last member left", func() bool {
			return slices.Equal(channels(), []string{"chat:msg:{x}"})
		})
		c1.Close()
		must(t, c2.SendJSON(msgFrame("x", "still here", "")))
		c2.Next(t, "message", wait) // x stays: c2 is in it
		c2.Close()
		eventually(t, wait, "x still subscribed after every member disconnected", func() bool {
			return len(channels()) == 0
		})
	})
}
