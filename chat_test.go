package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// A message sent on one instance reaches every member of the room on every
// instance, the sender included, and only through Redis: each copy is the
// exact frame a plain Redis subscriber sees on the room's channel.
func TestRelayAcrossInstances(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		ins := []*instance{newInstance(t, be), newInstance(t, be), newInstance(t, be)}
		ctx := context.Background()
		spy := be.client(t).Subscribe(ctx, "chat:msg:{lobby}")
		defer spy.Close()
		_, err := spy.Receive(ctx) // the subscription confirmation
		must(t, err)

		alice := ins[0].connect(t, "room=lobby&user=alice")
		bob := ins[1].connect(t, "room=lobby&user=bob")
		carol := ins[2].connect(t, "room=lobby&user=carol")
		must(t, alice.sendJSON(msgFrame("lobby", "hello <b>everyone</b> \u2028 é", "c1")))

		relayed, err := spy.ReceiveMessage(ctx)
		must(t, err)
		var want map[string]any
		must(t, json.Unmarshal([]byte(relayed.Payload), &want))
		if want["user"] != "alice" || want["instance"] != ins[0].h.InstanceID() || want["ref"] != "c1" ||
			want["text"] != "hello <b>everyone</b> \u2028 é" || want["room"] != "lobby" {
			t.Fatalf("frame published to Redis = %s", relayed.Payload)
		}
		for _, id := range []string{"id", "ts"} {
			if want[id] == nil || want[id] == "" {
				t.Fatalf("published frame has no %s: %s", id, relayed.Payload)
			}
		}
		for name, c := range map[string]*testWS{"alice (sender)": alice, "bob": bob, "carol": carol} {
			got := c.next(t, "message", wait)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s got %v, want the Redis-relayed frame %v", name, got, want)
			}
		}
	})
}

// Many senders on several instances at once: every client of the room, on
// every instance, sees the same messages in the same order.
func TestSameOrderOnEveryInstance(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		const instances, perInstance, senders, each = 3, 3, 6, 30
		var ins []*instance
		var clients []*testWS
		for i := 0; i < instances; i++ {
			in := newInstance(t, be, WithRateLimit(0, 1))
			ins = append(ins, in)
			for j := 0; j < perInstance; j++ {
				clients = append(clients, in.connect(t, fmt.Sprintf("room=race&user=u%d-%d", i, j)))
			}
		}
		var wg sync.WaitGroup
		for s := 0; s < senders; s++ {
			c := clients[s*len(clients)/senders]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < each; k++ {
					if err := c.sendJSON(msgFrame("race", fmt.Sprintf("s%d-%d", s, k), "")); err != nil {
						t.Errorf("send: %v", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		var first []string
		for i, c := range clients {
			var seq []string
			for len(seq) < senders*each {
				m := c.next(t, "message", wait)
				seq = append(seq, str(m["id"])+"/"+str(m["text"]))
			}
			if i == 0 {
				first = seq
				continue
			}
			if !slices.Equal(seq, first) {
				t.Fatalf("client %d saw a different order than client 0:\n%v\n%v", i, seq, first)
			}
		}
		// Each sender's own messages stay in the order it sent them.
		next := map[string]int{}
		for _, m := range first {
			text := m[strings.Index(m, "/")+1:]
			var s, k int
			fmt.Sscanf(text, "s%d-%d", &s, &k)
			key := fmt.Sprint(s)
			if k != next[key] {
				t.Fatalf("sender %d: message %d arrived when %d was due", s, k, next[key])
			}
			next[key]++
		}
	})
}

// "joined" means subscribed: a message published the moment a client is
// told "joined" always reaches it, for rooms that need a fresh SUBSCRIBE.
func TestJoinedMeansSubscribed(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be, WithRateLimit(0, 1))
		other := newInstance(t, be)
		c := mustDialWS(t, in.url+"?user=eve")
		ctx := context.Background()
		for i := 0; i < 40; i++ {
			room := fmt.Sprintf("fresh-%d", i)
			must(t, c.sendJSON(map[string]any{"type": "join", "room": room}))
			c.next(t, "joined", wait)
			must(t, other.h.Publish(ctx, room, "server", "first words"))
			if m := c.next(t, "message", wait); m["room"] != room {
				t.Fatalf("got %v, want the message to %s", m, room)
			}
			must(t, c.sendJSON(map[string]any{"type": "leave", "room": room}))
			c.next(t, "left", wait)
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
		must(t, inA.sendJSON(msgFrame("a", "to a", "")))
		must(t, inB.sendJSON(msgFrame("b", "to b", "")))
		// Each single-room client's next message is its own room's; a
		// message leaking across rooms would arrive first or in between.
		if m := inA.next(t, "message", wait); m["text"] != "to a" {
			t.Fatalf("client of a got %v", m)
		}
		if m := inB.next(t, "message", wait); m["text"] != "to b" {
			t.Fatalf("client of b got %v", m)
		}
		got := map[string]bool{}
		for range 2 {
			got[str(inBoth.next(t, "message", wait)["text"])] = true
		}
		if !got["to a"] || !got["to b"] {
			t.Fatalf("client of both got %v", got)
		}
		// Nothing else is queued for the single-room clients.
		must(t, a.h.Publish(context.Background(), "a", "server", "marker"))
		if m := inA.next(t, "message", wait); m["text"] != "marker" {
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
		must(t, c2.sendJSON(map[string]any{"type": "leave", "room": "y", "ref": "l1"}))
		if f := c2.next(t, "left", wait); f["room"] != "y" {
			t.Fatalf("left frame = %v", f)
		}
		eventually(t, wait, "y still subscribed after its last member left", func() bool {
			return slices.Equal(channels(), []string{"chat:msg:{x}"})
		})
		c1.close()
		must(t, c2.sendJSON(msgFrame("x", "still here", "")))
		c2.next(t, "message", wait) // x stays: c2 is in it
		c2.close()
		eventually(t, wait, "x still subscribed after every member disconnected", func() bool {
			return len(channels()) == 0
		})
	})
}

// The room key is set on join, refreshed by messages, and expires TTL after
// the last sign of life (miniredis's clock is moved by hand).
func TestRoomActivityKey(t *testing.T) {
	mr := miniredis.RunT(t)
	be := &backend{addr: mr.Addr(), mr: mr}
	in := newInstance(t, be)
	ctx := context.Background()
	active := func(room string) bool {
		ok, err := in.h.RoomActive(ctx, room)
		must(t, err)
		return ok
	}
	if active("quiet") {
		t.Fatal("a room nobody joined is active")
	}
	c := in.connect(t, "room=quiet&user=zed")
	if !active("quiet") {
		t.Fatal("room not active once joined")
	}
	if ttl := mr.TTL("chat:room:{quiet}"); ttl != 5*time.Minute {
		t.Fatalf("TTL after join = %v, want 5m", ttl)
	}
	mr.FastForward(4 * time.Minute)
	must(t, c.sendJSON(msgFrame("quiet", "still alive", "")))
	c.next(t, "message", wait)
	if ttl := mr.TTL("chat:room:{quiet}"); ttl != 5*time.Minute {
		t.Fatalf("TTL after a message = %v, want it refreshed to 5m", ttl)
	}
	c.close()
	mr.FastForward(5*time.Minute + time.Second)
	if active("quiet") {
		t.Fatal("room still active a TTL after its last sign of life")
	}
	if _, err := in.h.RoomActive(ctx, "bad room"); !errors.Is(err, ErrInvalidRoom) {
		t.Fatalf("RoomActive(bad room) error = %v, want ErrInvalidRoom", err)
	}
}

// While an instance holds members, it keeps the room key alive by itself,
// and the key expires once they are gone (real Redis, real time).
func TestRoomActivityRefreshedWhileMembersStay(t *testing.T) {
	be := realRedis(t)
	const ttl = 2 * time.Second
	in := newInstance(t, be, WithRoomTTL(ttl))
	rdb := be.client(t)
	ctx := context.Background()
	c := in.connect(t, "room=lasting&user=stay")
	// Stay silent for two TTLs: only the periodic refresh can keep the key.
	deadline := time.Now().Add(2 * ttl)
	for time.Now().Before(deadline) {
		if n, err := rdb.Exists(ctx, "chat:room:{lasting}").Result(); err != nil || n != 1 {
			t.Fatalf("room key gone while a member is connected (exists=%d, err=%v)", n, err)
		}
		time.Sleep(100 * time.Millisecond) // sampling the key, not synchronising
	}
	c.close()
	eventually(t, 2*ttl, "room key still there a TTL after its last member left", func() bool {
		n, err := rdb.Exists(ctx, "chat:room:{lasting}").Result()
		return err == nil && n == 0
	})
}

// Publish takes the same path as clients; bad arguments are refused.
func TestPublish(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be)
		c := in.connect(t, "room=news&user=reader")
		ctx := context.Background()
		must(t, in.h.Publish(ctx, "news", "editor", "extra!"))
		m := c.next(t, "message", wait)
		if m["user"] != "editor" || m["text"] != "extra!" || m["instance"] != in.h.InstanceID() {
			t.Fatalf("got %v", m)
		}
		for _, tc := range []struct {
			room, user, text string
			want             error
		}{
			{"bad room", "u", "t", ErrInvalidRoom},
			{"news", "", "t", ErrInvalidUser},
			{"news", "bell\a", "t", ErrInvalidUser},
			{"news", "u", "", ErrInvalidText},
			{"news", "u", strings.Repeat("x", 4097), ErrTooLarge},
		} {
			if err := in.h.Publish(ctx, tc.room, tc.user, tc.text); !errors.Is(err, tc.want) {
				t.Errorf("Publish(%q, %q, %d bytes) = %v, want %v", tc.room, tc.user, len(tc.text), err, tc.want)
			}
		}
		c.close()
		must(t, in.h.Shutdown(ctx))
		if err := in.h.Publish(ctx, "news", "editor", "late"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Publish after Shutdown = %v, want ErrClosed", err)
		}
	})
}

// Shutdown closes every client with 1001 and leaves no goroutine behind.
func TestShutdown(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		a, b := newInstance(t, be), newInstance(t, be)
		var cs []*testWS
		for i := 0; i < 5; i++ {
			cs = append(cs, a.connect(t, fmt.Sprintf("room=r%d&room=common&user=u%d", i, i)))
		}
		peer := b.connect(t, "room=common&user=peer")
		must(t, cs[0].sendJSON(msgFrame("common", "before shutdown", "")))
		peer.next(t, "message", wait)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- a.h.Shutdown(ctx) }()
		for i, c := range cs {
			if code := c.expectClose(t, wait); code != 1001 {
				t.Errorf("client %d: close code %d, want 1001", i, code)
			}
			must(t, c.sendClose(1001, "")) // as a browser answers
		}
		must(t, <-done)
		// Answered closes end the connections at once, well before the
		// grace period a silent client would be given.
		if d := time.Since(start); d > a.h.cfg.closeGrace/2 {
			t.Errorf("Shutdown took %v although every client answered the close", d)
		}
		if _, status, _ := dialWS(t, a.url+"?room=late", nil); status != 503 {
			t.Errorf("connect after Shutdown: status %d, want 503", status)
		}
		go func() { done <- b.h.Shutdown(ctx) }()
		if code := peer.expectClose(t, wait); code != 1001 {
			t.Errorf("peer: close code %d, want 1001", code)
		}
		must(t, peer.sendClose(1001, ""))
		must(t, <-done)
		noGoroutinesLeft(t)
	})
}

// A Shutdown whose context ends drops the connections that did not answer
// the close, and still leaves no goroutine behind.
func TestShutdownDeadline(t *testing.T) {
	mr := miniredis.RunT(t)
	in := newInstance(t, &backend{addr: mr.Addr(), mr: mr})
	c := in.connect(t, "room=stuck&user=mute")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	// c never reads, so it never answers the close frame: only the
	// deadline ends the wait (the close grace is 2 s).
	err := in.h.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	noGoroutinesLeft(t)
	_ = c
}

// The ClusterClient code path works (against miniredis's one-node cluster).
func TestClusterClient(t *testing.T) {
	mr := miniredis.RunT(t)
	cluster := func() *redis.ClusterClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{mr.Addr()}})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	a := newInstanceWith(t, cluster(), cluster())
	b := newInstanceWith(t, cluster(), cluster())
	ca := a.connect(t, "room=shard&user=a")
	cb := b.connect(t, "room=shard&user=b")
	must(t, ca.sendJSON(msgFrame("shard", "across the cluster", "")))
	for _, c := range []*testWS{ca, cb} {
		if m := c.next(t, "message", wait); m["text"] != "across the cluster" {
			t.Fatalf("got %v", m)
		}
	}
}

func TestNewRefusesBadClients(t *testing.T) {
	mr := miniredis.RunT(t)
	ok := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer ok.Close()
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": mr.Addr()}})
	defer ring.Close()
	for name, args := range map[string][2]redis.UniversalClient{
		"nil pub":       {nil, ok},
		"typed nil sub": {ok, (*redis.Client)(nil)},
		"ring":          {ring, ok},
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.HasPrefix(fmt.Sprint(r), "chat: ") {
					t.Errorf("%s: New did not panic with a chat: message (recovered %v)", name, r)
				}
			}()
			New(args[0], args[1])
		}()
	}
}

// A Redis that lost its script cache (SCRIPT FLUSH, restart, failover)
// still takes messages: the script is sent again with its source.
func TestPublishAfterScriptFlush(t *testing.T) {
	forEachRedis(t, func(t *testing.T, be *backend) {
		in := newInstance(t, be)
		c := in.connect(t, "room=flush&user=f")
		must(t, c.sendJSON(msgFrame("flush", "before", "")))
		c.next(t, "message", wait)
		must(t, be.client(t).ScriptFlush(context.Background()).Err())
		must(t, c.sendJSON(msgFrame("flush", "after", "r2")))
		if m := c.next(t, "message", wait); m["ref"] != "r2" {
			t.Fatalf("after SCRIPT FLUSH: %v", m)
		}
	})
}
